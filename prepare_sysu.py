"""Prepare SYSU-MM01: resized uint8 arrays of the training, query and gallery images.

    python prepare_sysu.py --data-dir /data/SYSU-MM01 --output-dir data/sysu_288x144
"""

import argparse
import signal
import sys

from rpnr.data.prepared import PreparedDataError, format_stats, write_prepared
from rpnr.data.raw_images import RawDataError
from rpnr.data.sysu import plan_sysu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="raw SYSU-MM01 folder (cam1..cam6, exp/)")
    parser.add_argument("--output-dir", required=True, help="folder to create with the prepared arrays")
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: up to 8)")
    args = parser.parse_args(argv)
    try:
        plan = plan_sysu(args.data_dir)
        manifest = write_prepared(plan, args.output_dir, args.height, args.width, args.overwrite, args.workers)
    except (RawDataError, PreparedDataError, OSError) as exc:
        print(f"prepare_sysu.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(format_stats(manifest))
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C (temporary files removed)
    sys.exit(main())
