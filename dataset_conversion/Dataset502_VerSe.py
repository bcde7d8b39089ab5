"""Convert VerSe 2019/2020 + a Genant grade sheet into nnUNet_raw/Dataset502_VerSe.

    python dataset_conversion/Dataset502_VerSe.py -i /data/verse19 /data/verse20 --grades verse_grades.csv

See ``vfscreen/conversion/verse.py`` (layout, case ids, centroids) and the README section "Using real data".
"""
from vfscreen.conversion.verse import main

if __name__ == "__main__":
    main()
