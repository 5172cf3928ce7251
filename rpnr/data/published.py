"""Published statistics of the datasets, and their comparison with what a prepare script wrote.

Every dataset's figures live in :data:`PUBLISHED` and nowhere else; a new dataset needs one
entry here and a plan that counts the same figures (see ``PreparePlan.figures``). A differing
figure is a warning, not an error: a subset for a quick experiment is legitimate.

Sources (checked for this table):

- SYSU-MM01: Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification", ICCV 2017, and
  the dataset's README (491 identities = 296 training + 99 validation + 96 test; training uses
  training + validation ids). The RPNR release's own log (``logs/sysu_s2_log.txt``) prints
  395 ids with 22,258 RGB and 11,909 IR training images, and 384 + 3,419 = 3,803 IR test images
  of 96 ids. All-search galleries (one image per test id and RGB camera 1, 2, 4, 5) hold 301
  images and indoor-search galleries (cameras 1, 2) 112, as the cross-modality literature reports.
- RegDB: Nguyen et al., "Person Recognition System Based on a Combination of Body Images from
  Visible Light and Thermal Cameras", Sensors 2017 (412 persons, 10 visible + 10 thermal images
  each); the ten-trial protocol (Ye et al., 2018) splits them into 206 training and 206 test ids.
- LLCM: Zhang and Wang, "Diverse Embedding Expansion Network and Low-Light Cross-Modality
  Benchmark for Visible-Infrared Person Re-identification", CVPR 2023 (46,767 bounding boxes of
  1,064 identities from 9 cameras, split into 713 training identities, 16,946 visible + 13,975
  infrared images, and 351 test identities, 8,680 visible + 7,166 infrared images); the release's
  DEEN/AGW code trains a 713-class classifier. The authors adjusted the dataset after publication
  (ZYK100/LLCM issue #28, 2024), so a copy received later may differ from these figures: the
  manifest records the counts that were prepared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedStats:
    """The published figures of one dataset: figure name -> count."""

    name: str  # the dataset's published name
    source: str  # where the figures come from (short)
    figures: Mapping[str, int]


PUBLISHED: dict[str, PublishedStats] = {
    "sysu": PublishedStats("SYSU-MM01", "Wu et al. ICCV 2017; RPNR release log", {
        "train identities": 395,
        "train visible images": 22258,
        "train infrared images": 11909,
        "test identities": 96,
        "query infrared images": 3803,
        "all-search gallery images per trial": 301,
        "indoor-search gallery images per trial": 112,
    }),
    "regdb": PublishedStats("RegDB", "Nguyen et al. Sensors 2017; Ye et al. 2018 trials", {
        "identities": 412,
        "visible images per identity": 10,
        "thermal images per identity": 10,
        "train identities per trial": 206,
        "test identities per trial": 206,
        "train visible images per trial": 2060,
        "train thermal images per trial": 2060,
        "test visible images per trial": 2060,
        "test thermal images per trial": 2060,
    }),
    "llcm": PublishedStats("LLCM", "Zhang and Wang CVPR 2023", {
        "train identities": 713,
        "train visible images": 16946,
        "train infrared images": 13975,
        "test identities": 351,
        "test visible images": 8680,
        "test infrared images": 7166,
    }),
}


def _span(values: Sequence[int]) -> list[int]:
    """``[fewest, most]`` of the values observed for one figure (equal when it does not vary)."""
    return [int(min(values)), int(max(values))]


def _text(span: list[int]) -> str:
    return f"{span[0]:,}" if span[0] == span[1] else f"{span[0]:,} to {span[1]:,}"


def compare_published(dataset: str, found: Mapping[str, Sequence[int]]) -> dict:
    """Compare counted figures with the published ones.

    ``found`` maps a figure name to every value observed for it (one value for a total,
    one per trial or per identity for "per trial"/"per identity" figures). Returns
    ``{"dataset", "name", "source", "expected", "found", "differences", "matches"}``:
    ``expected`` maps figures to counts, ``found`` to ``[fewest, most]`` observed, and
    ``differences`` holds one sentence per differing figure. A dataset without published
    figures has no expectations (and matches).
    """
    stats = PUBLISHED.get(dataset, PublishedStats(dataset, "none", {}))
    counted = {name: _span(values) for name, values in found.items() if len(values)}
    differences = []
    for figure, expected in stats.figures.items():
        span = counted.get(figure)
        if span is None:
            differences.append(f"{figure}: not counted here, published {expected:,}")
        elif span != [expected, expected]:
            differences.append(f"{figure}: found {_text(span)}, published {expected:,}")
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
