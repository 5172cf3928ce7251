"""The command line of the ``prepare_<dataset>.py`` scripts, for any registered dataset."""

from __future__ import annotations

import argparse
import sys

from rpnr.command import Parser, run_command
from rpnr.command import script as run_script
from rpnr.data.prepared import format_stats, write_prepared
from rpnr.data.published import format_published
from rpnr.datasets import get_dataset


def prepare_main(dataset: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """Prepare the registered ``dataset``: parse the arguments, write the prepared arrays, print the statistics
    table and its comparison with the published statistics (one warning line per difference). Bad input prints one
    ``<prog>: error: ...`` line and returns 1; Ctrl-C one line and 130."""
    ds = get_dataset(dataset)
    parser = Parser(prog=ds.prepare_script, description=description or f"Prepare {ds.display}.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help=ds.layout)
    parser.add_argument("--output-dir", required=True, help="folder to create with the prepared arrays")
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that this project prepared earlier (any other non-empty "
                             "folder is refused and left alone)")
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: up to 8)")
    args = parser.parse_args(argv)

    def prepare() -> None:
        manifest = write_prepared(ds.plan(args.data_dir), args.output_dir, args.height, args.width, args.overwrite,
                                  args.workers)
        print(format_stats(manifest))
        for line in format_published(manifest["published_check"]):
            print(line)
        print(f"wrote {args.output_dir}")

    return run_command(prepare, ds.prepare_script, lambda exc: f"interrupted; {args.output_dir} was left as it was"
                       if isinstance(exc, KeyboardInterrupt) else None)


def script(dataset: str, description: str) -> None:
    """Run ``prepare_<dataset>.py`` (SIGTERM ends it as Ctrl-C does: the temporary output removed)."""
    run_script(lambda: prepare_main(dataset, sys.argv[1:], description))
