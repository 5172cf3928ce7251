"""Final test results of training runs: the best-on-test model beside the last epoch's model.

A run's ``test.json`` is ``{"best": {"epoch": E, <setting>: metrics}, "last": {"epoch": N, <setting>:
metrics}}`` with metrics ``{"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}`` in percent
(settings: SYSU ``all``, ``indoor``; RegDB ``visible_to_thermal``, ``thermal_to_visible``). "best" is
selected on the test set (the release's protocol, optimistic); "last" involves no choice made on
the test set.

    python -m rpnr.results logs/sysu_s2/test.json
    python -m rpnr.results logs/regdb_s2/{1..10}/test.json --json logs/regdb_s2/summary.json   # mean of trials
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

COLUMNS = ("best", "last")
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
METRIC_LABEL = {m: m.replace("rank", "Rank-") for m in METRICS}  # "rank1" -> "Rank-1"; "mAP", "mINP" as they are


def settings(result: dict) -> list[str]:
    """The test settings of a best/last result (e.g. ["all", "indoor"]), in stored order."""
    return [k for k, v in result["best"].items() if isinstance(v, dict) and "rank1" in v]


def mean_results(results: Sequence[dict]) -> dict:
    """The mean over runs (RegDB trials) of best/last results; "epoch" becomes the list of epochs."""
    if not results:
        raise ValueError("no results to average")
    return {column: {"epoch": [r[column]["epoch"] for r in results],
                     **{setting: {m: float(np.mean([r[column][setting][m] for r in results])) for m in METRICS}
                        for setting in settings(results[0])}} for column in COLUMNS}


def side_by_side(result: dict, title: str) -> list[str]:
    """Lines of a table: one row per setting and metric, the best and the last model in two columns."""
    heads = [f"{c} (epoch {e})" if isinstance(e := result[c]["epoch"], int) else f"{c} (epochs {','.join(map(str, e))})"
             for c in COLUMNS]
    rows = [(setting, METRIC_LABEL[m], *(f"{result[c][setting][m]:.2f}" for c in COLUMNS))
            for setting in settings(result) for m in METRICS]
    width = [max(len(r[i]) for r in rows) for i in range(2)] + [max(len(h), 6) for h in heads]
    lines = [title] + [f"{s:<{width[0]}}  {m:<{width[1]}}  {b:>{width[2]}}  {last:>{width[3]}}"
                       for s, m, b, last in [("", "", *heads), *rows]]
    lines.append("best = the epoch with the highest per-epoch test Rank-1 (the release's protocol, optimistic); "
                 "last = the final epoch (no choice made on the test set)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="test.json files of training runs (several: their mean)")
    parser.add_argument("--json", default=None, help="write the (mean) result to this file")
    args = parser.parse_args(argv)
    try:
        results = [json.loads(open(path).read()) for path in args.files]
        if not all(isinstance(r, dict) and set(COLUMNS) <= set(r) for r in results):
            raise ValueError("not a test.json with 'best' and 'last' (written by train.py)")
    except (OSError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    result = results[0] if len(results) == 1 else mean_results(results)
    title = "final test" if len(results) == 1 else f"final test, mean of {len(results)} runs"
    print("\n".join(side_by_side(result, title)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
