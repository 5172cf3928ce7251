#!/usr/bin/env python
"""The paper's table from training runs: every run folder (one holding run.json) under the given folders, the
finished runs grouped by dataset, stage and recipe, each final-test metric as mean ± sample sd over a group's
runs (seeds, and RegDB's trials), beside the sd over gallery trials and the release's published number.

    python report.py logs/                       # every run under logs/
    python report.py logs/regdb_s2 --csv regdb.csv --markdown regdb.md

The groups' "settings" are the recipe entries in which they differ: runs with --no-* switches make the ablation
table. A run without test.json (unfinished) or with a damaged one is named and left out.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from rpnr.files import atomic_write, error_line
from rpnr.report import COLUMNS, ReportError, find_runs, group_rows, group_runs, markdown_table, text_table


def _csv_text(groups) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for group in groups:
        for row in group_rows(group):
            writer.writerow({k: "" if v is None else f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders searched for run folders")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per group, test setting, model and metric")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown (for a paper draft)")
    args = parser.parse_args(argv)
    try:
        runs, skipped = find_runs(args.paths)
        for line in skipped:
            print(line, file=sys.stderr)
        if not runs:
            raise ReportError(f"no finished run under {', '.join(args.paths)} ({len(skipped)} left out above)")
        groups = group_runs(runs)
        print("\n".join(text_table(groups)))
        if args.csv:
            atomic_write(args.csv, _csv_text(groups))
        if args.markdown:
            atomic_write(args.markdown, "\n".join(markdown_table(groups)) + "\n")
    except (ReportError, OSError) as exc:
        print(f"report.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
