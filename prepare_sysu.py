"""Prepare SYSU-MM01: resized uint8 arrays of the training, query and gallery images.

    python prepare_sysu.py --data-dir /data/SYSU-MM01 --output-dir data/sysu_288x144
"""

import sys

from rpnr.data.prepare_cli import exit_on_sigterm, prepare_main


def main(argv=None) -> int:
    return prepare_main("sysu", argv, __doc__)


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
