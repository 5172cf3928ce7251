"""Prepare LLCM: resized uint8 arrays of the training images and of every test image, with the galleries
of trials 0-9.

    python prepare_llcm.py --data-dir /data/LLCM --output-dir data/llcm_288x144
"""

from rpnr.data.prepare import prepare_script

if __name__ == "__main__":
    prepare_script("llcm", __doc__)
