"""Convert the Faint-Features dataset (Wei et al. 2022).

    python dataset_conversion/Dataset503_FaintFeatures.py -i original_dataset.zip    # -> nnUNet_raw/Dataset503_FaintFeatures
    python dataset_conversion/Dataset503_FaintFeatures.py -i processed_dataset.zip   # -> grader crops + folds, Dataset504

See ``vfscreen/conversion/faint_features.py`` and the README section "Using real data".
"""
from vfscreen.conversion.faint_features import main

if __name__ == "__main__":
    main()
