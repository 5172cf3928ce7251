"""The dataset registry (DESIGN.md section 7, "Extension points"): one :class:`Dataset` entry per dataset holds
everything that differs between datasets, so the rest of the package (preparation, training, tests, rank lists,
synthetic trees, the command lines) asks the registry instead of naming datasets; the built-in entries
(:func:`register`) live beside their raw layouts in ``rpnr/data/<name>.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rpnr.data.published import PublishedResults, PublishedStats

BUILTIN = ("sysu", "regdb", "llcm")  # modules of rpnr.data whose import registers the built-in datasets
_REGISTRY: dict[str, Dataset] = {}


@dataclass(frozen=True)
class Side:
    """One side of a test setting, or one modality's training images: rows of a prepared image set."""

    set: str  # prepared image set, e.g. "query"
    modal: str  # the stem its images go through: "visible" | "infrared"
    index: str | None = None  # index array of the rows of trial {trial}; None: every row of the set
    labels: str | None = None  # identity labels of trial {trial}; None: the set's own pids

    def arrays(self, trial: int) -> tuple[str | None, str | None]:
        """The names of this side's index and label arrays for ``trial``."""
        return tuple(None if name is None else name.format(trial=trial) for name in (self.index, self.labels))


@dataclass(frozen=True)
class Setting:
    """A test setting: queries against a gallery, scored by ``metric(distmat, q_pids, g_pids, q_cams, g_cams)
    -> (cmc, mAP, mINP)``; ``ignored(q_pids, q_cams, g_pids, g_cams) -> bool`` is the metric's rule for
    gallery images it skips (None: every image is compared)."""

    name: str  # key in results, e.g. "all", "visible_to_thermal"
    title: str  # e.g. "SYSU-MM01 all-search"
    label: str  # in result lines, e.g. "(all-search)", "Visible to Thermal"
    query: Side
    gallery: Side
    metric: Callable
    ignored: Callable | None = None
    about: str = ""  # what the setting computes, for a variant's command-line help


@dataclass(frozen=True)
class Dataset:
    """Everything that differs between datasets."""

    name: str  # command-line name
    display: str  # published name, e.g. "SYSU-MM01"
    layout: str  # what the raw folder holds (prepare's --data-dir help)
    plan: Callable  # plan(raw_root) -> rpnr.data.prepared.PreparePlan: the raw layout read, what prepare writes
    published: PublishedStats
    write_synthetic: Callable  # write_synthetic(out, **synthetic_sizes, height, width, seed) -> counts
    synthetic_sizes: dict[str, int]  # the writer's size arguments and their defaults
    train: tuple[Side, Side]  # visible and infrared training images
    settings: tuple[Setting, ...]  # the final test, in report order
    trials: tuple[int, ...]  # test trials
    eps: float  # DBSCAN eps
    iters: int  # iterations per epoch
    top_k: int  # NPC prototype members
    full_rgb_batch_in_stage2: bool  # stage 2 takes batch_size visible images (else batch_size / 2)
    model_per_trial: bool  # one model per trial, trained on its own split (else one model for every trial)
    epoch_setting: str  # the setting tested every epoch (and drawn in rank lists)
    modes: tuple[str, ...] = ()  # settings test.py tests one at a time (--mode); else all at once
    variants: dict[str, Setting] = field(default_factory=dict)  # test.py alternatives to a setting, by flag
    train_order: Callable | None = None  # train_order(pids, paths) -> row order of the training images
    published_results: PublishedResults | None = None  # the release's stage-2 results (report.py), if any

    @property
    def prepare_script(self) -> str:
        return f"prepare_{self.name}.py"

    def setting(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise ValueError(f"{self.display} has no test setting {name!r} (choose from "
                         f"{', '.join(s.name for s in self.settings)})")

    def epoch_trial(self, run_trial: int) -> int:
        """The test trial a run on ``run_trial`` evaluates every epoch: its own when each trial has its own
        model, else the first."""
        return run_trial if self.model_per_trial else self.trials[0]


def register(dataset: Dataset) -> Dataset:
    """Add ``dataset`` to the registry (replacing an entry of the same name)."""
    _REGISTRY[dataset.name] = dataset
    return dataset


def registry() -> dict[str, Dataset]:
    """Every registered dataset by name: the built-in ones first, in their order, then the others."""
    for module in BUILTIN:
        importlib.import_module(f"rpnr.data.{module}")
    return {**{name: _REGISTRY[name] for name in BUILTIN}, **_REGISTRY}


def names() -> list[str]:
    """The names of the registered datasets (command-line choices)."""
    return list(registry())


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``; ``ValueError`` (one line) for an unknown one."""
    datasets = registry()
    if name not in datasets:
        raise ValueError(f"unknown dataset {name!r} (choose from {', '.join(datasets)})")
    return datasets[name]


def per_dataset(attribute: str) -> str:
    """``attribute``'s value per dataset, for help texts: one value, or ``SYSU-MM01 0.6, RegDB 0.3, ...``."""
    values = {ds.display: getattr(ds, attribute) for ds in registry().values()}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{display} {value}" for display, value in values.items())
