"""Prepare SYSU-MM01: resized uint8 arrays of the training, query and gallery images.

    python prepare_sysu.py --data-dir /data/SYSU-MM01 --output-dir data/sysu_288x144
"""

import sys

from rpnr.data.prepare_cli import exit_on_sigterm, prepare_main
from rpnr.data.sysu import plan_sysu


def main(argv=None) -> int:
    return prepare_main("prepare_sysu.py", __doc__, "raw SYSU-MM01 folder (cam1..cam6, exp/)", plan_sysu, argv)


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
