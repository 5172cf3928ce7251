#!/usr/bin/env python
"""The paper's table from training runs: every run folder (one holding run.json) under the given folders, the
finished runs grouped by dataset, stage and recipe, each final-test metric as mean ± sample sd over a group's
runs (seeds, and RegDB's trials), beside the sd over gallery trials and the release's published number.

    python report.py logs/                       # every run under logs/
    python report.py logs/regdb_s2 --csv regdb.csv --markdown regdb.md

The groups' "settings" are the recipe entries in which they differ: runs with --no-* switches make the ablation
table. A run without test.json (unfinished) or with a damaged one is named and left out.
"""

import argparse
import sys

from rpnr.common.command import Parser, run_command, script
from rpnr.common.errors import ReportError
from rpnr.common.files import atomic_write, check_outputs
from rpnr.tools.report import csv_text, find_runs, group_runs, markdown_table, text_table


def report(argv) -> None:
    parser = Parser(prog="report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders searched for run folders")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per group, test setting, model and metric")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown (for a paper draft)")
    args = parser.parse_args(argv)
    check_outputs([(f"--{kind} {path}", path) for kind, path in (("csv", args.csv), ("markdown", args.markdown))
                   if path])
    runs, skipped = find_runs(args.paths)
    for line in skipped:
        print(line, file=sys.stderr)
    if not runs:
        raise ReportError(f"no finished run under {', '.join(args.paths)} ({len(skipped)} left out above)")
    groups = group_runs(runs)
    if args.csv:  # the files first: a reader that stops early (report.py ... | head) changes nothing
        atomic_write(args.csv, csv_text(groups))
    if args.markdown:
        atomic_write(args.markdown, "\n".join(markdown_table(groups)) + "\n")
    print("\n".join(text_table(groups)))


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: report(argv), "report.py")


if __name__ == "__main__":
    script(main)
