"""Prepare SYSU-MM01: resized uint8 arrays of the training, query and gallery images.

    python prepare_sysu.py --data-dir /data/SYSU-MM01 --output-dir data/sysu_288x144
"""

from rpnr.data.prepare_cli import script

if __name__ == "__main__":
    script("sysu", __doc__)
