"""Prepare RegDB: resized uint8 arrays of the train and test images of trials 1-10.

    python prepare_regdb.py --data-dir /data/RegDB --output-dir data/regdb_288x144
"""

from rpnr.data.prepare import prepare_script

if __name__ == "__main__":
    prepare_script("regdb", __doc__)
