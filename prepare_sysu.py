"""Prepare SYSU-MM01: resized uint8 arrays of the training, query and gallery images.

    python prepare_sysu.py --data-dir /data/SYSU-MM01 --output-dir data/sysu_288x144
"""

from rpnr.data.prepare import prepare_script

if __name__ == "__main__":
    prepare_script("sysu", __doc__)
