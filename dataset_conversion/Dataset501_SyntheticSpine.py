"""Generate Dataset501_SyntheticSpine: synthetic spine CT with exact Genant grades (see vfscreen.phantom).

    python dataset_conversion/Dataset501_SyntheticSpine.py [--seed S] [--preset demo|full] [--num_cases N]
        [--num_test_cases M] [--patient_mix 1:3:3:3] [-np N] [-d 501] [--overwrite]
"""
from vfscreen.phantom.cli import main

if __name__ == "__main__":
    main()
