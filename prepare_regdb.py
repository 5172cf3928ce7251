"""Prepare RegDB: resized uint8 arrays of the train and test images of trials 1-10.

    python prepare_regdb.py --data-dir /data/RegDB --output-dir data/regdb_288x144
"""

import sys

from rpnr.data.prepare_cli import exit_on_sigterm, prepare_main


def main(argv=None) -> int:
    return prepare_main("regdb", argv, __doc__)


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
