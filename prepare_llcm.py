"""Prepare LLCM: resized uint8 arrays of the training images and of every test image, with the galleries
of trials 0-9.

    python prepare_llcm.py --data-dir /data/LLCM --output-dir data/llcm_288x144
"""

import sys

from rpnr.data.prepare_cli import exit_on_sigterm, prepare_main


def main(argv=None) -> int:
    return prepare_main("llcm", argv, __doc__)


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
