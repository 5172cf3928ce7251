"""Published statistics of the datasets, and their comparison with what a prepare script wrote.

Each dataset's figures are its registry entry's ``published`` (sources in its module's docstring); its
prepare plan counts the same figures (``PreparePlan.figures``). A differing figure is a warning, not an
error: a subset for a quick experiment is legitimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rpnr.datasets import registry


@dataclass(frozen=True)
class PublishedStats:
    """The published figures of one dataset: figure name -> count."""

    name: str  # the dataset's published name
    source: str  # where the figures come from (short)
    figures: Mapping[str, int]


@dataclass(frozen=True)
class PublishedResults:
    """The release's stage-2 results (best model, selected on the test set as the release does): test setting ->
    metric -> (mean, sample sd over the release's ten trials), in percent."""

    source: str  # where the figures come from
    results: Mapping[str, Mapping[str, tuple[float, float]]]


def published_results(source: str, table: Mapping[str, tuple[tuple[float, float], ...]]) -> PublishedResults:
    """:class:`PublishedResults` from each setting's (mean, sd) of Rank-1, -5, -10, -20, mAP and mINP, in order."""
    metrics = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    return PublishedResults(source, {setting: dict(zip(metrics, row)) for setting, row in table.items()})


def compare_published(dataset: str, found: Mapping[str, Sequence[int]]) -> dict:
    """Compare counted figures (``found``: figure name -> every value observed, one for a total, one per trial or
    identity for "per trial"/"per identity" figures) with the published ones: ``{"dataset", "name", "source",
    "expected", "found", "differences", "matches"}``, ``expected`` mapping figures to counts, ``found`` to
    ``[fewest, most]``, ``differences`` one sentence per differing figure. A dataset without published figures has
    no expectations (and matches)."""
    known = registry()
    stats = known[dataset].published if dataset in known else PublishedStats(dataset, "none", {})
    counted = {name: [int(min(values)), int(max(values))] for name, values in found.items() if len(values)}
    differences = []
    for figure, expected in stats.figures.items():
        span = counted.get(figure)
        if span is None:
            differences.append(f"{figure}: not counted here, published {expected:,}")
        elif span != [expected, expected]:
            text = f"{span[0]:,}" if span[0] == span[1] else f"{span[0]:,} to {span[1]:,}"
            differences.append(f"{figure}: found {text}, published {expected:,}")
    return {"dataset": dataset, "name": stats.name, "source": stats.source, "expected": dict(stats.figures),
            "found": counted, "differences": differences, "matches": not differences}


def format_published(check: dict) -> list[str]:
    """The lines a prepare script prints for :func:`compare_published`'s result: one warning per
    difference, or one line saying that every figure matches."""
    if not check["expected"]:
        return [f"no published statistics for {check['name']} to compare with"]
    if check["matches"]:
        return [f"all {len(check['expected'])} figures match the published {check['name']} statistics "
                f"({check['source']})"]
    return [f"warning: {check['name']} {line} (a subset is fine for a quick experiment)"
            for line in check["differences"]]
