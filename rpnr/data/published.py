"""Published figures of the datasets and their comparison with a prepared folder (DESIGN.md sec. 1)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")  # of every test result, in this order


@dataclass(frozen=True)
class PublishedStats:
    """The published statistics of one dataset: figure name -> count."""

    name: str  # the dataset's published name
    source: str = "none"
    figures: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedResults:
    """The release's stage-2 results: setting -> metric -> (mean, sample sd over its ten trials), percent."""

    source: str
    results: Mapping[str, Mapping[str, tuple[float, float]]]


def published_results(source: str, table: Mapping[str, tuple[tuple[float, float], ...]]) -> PublishedResults:
    """:class:`PublishedResults` from each setting's (mean, sd) of the :data:`METRICS`, in order."""
    return PublishedResults(source, {setting: dict(zip(METRICS, row)) for setting, row in table.items()})


def compare_published(stats: PublishedStats, found: Mapping[str, Sequence[int]]) -> dict:
    """Counted figures (figure -> every value observed) against ``stats``: ``{"name", "source", "expected",
    "found": figure -> [fewest, most], "differences": one sentence per differing figure, "matches"}``."""
    counted = {name: [int(min(values)), int(max(values))] for name, values in found.items() if len(values)}
    differences = []
    for figure, expected in stats.figures.items():
        span = counted.get(figure)
        if span is None:
            differences.append(f"{figure}: not counted here, published {expected:,}")
        elif span != [expected, expected]:
            text = f"{span[0]:,}" if span[0] == span[1] else f"{span[0]:,} to {span[1]:,}"
            differences.append(f"{figure}: found {text}, published {expected:,}")
    return {"name": stats.name, "source": stats.source, "expected": dict(stats.figures),
            "found": counted, "differences": differences, "matches": not differences}


def format_published(check: dict) -> list[str]:
    """What prepare prints for :func:`compare_published`: a warning per difference, or one line that all match."""
    if not check["expected"]:
        return [f"no published statistics for {check['name']} to compare with"]
    if check["matches"]:
        return [f"all {len(check['expected'])} figures match the published {check['name']} statistics "
                f"({check['source']})"]
    return [f"warning: {check['name']} {line} (a subset is fine for a quick experiment)"
            for line in check["differences"]]
