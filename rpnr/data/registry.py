"""The dataset registry (DESIGN.md section 7): one :class:`Dataset` per dataset; :func:`register`."""

from collections.abc import Callable
from dataclasses import dataclass, field

from rpnr.common.errors import UsageError
from rpnr.data import llcm, regdb, sysu
from rpnr.data.prepared import Setting, Side
from rpnr.data.published import PublishedResults, PublishedStats


@dataclass(frozen=True)
class Dataset:
    """Everything that differs between datasets."""

    name: str  # command-line name
    display: str  # published name, e.g. "SYSU-MM01"
    layout: str  # what the raw folder holds (prepare's --data-dir help)
    plan: Callable  # plan(raw_root) -> rpnr.data.prepared.PreparePlan: the raw layout read, what prepare writes
    published: PublishedStats
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
    published_results: PublishedResults | None = None  # the release's stage-2 results (report.py)

    @property
    def prepare_script(self) -> str:
        return f"prepare_{self.name}.py"

    def setting(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise UsageError(f"{self.display} has no test setting {name!r} (choose from "
                         f"{', '.join(s.name for s in self.settings)})")

    def epoch_trial(self, run_trial: int) -> int:
        """The trial tested every epoch: the run's own when each trial has its own model, else the first."""
        return run_trial if self.model_per_trial else self.trials[0]


_REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Add ``dataset`` to the registry (replacing an entry of the same name)."""
    _REGISTRY[dataset.name] = dataset
    return dataset


def all_datasets() -> dict[str, Dataset]:
    """Every registered dataset by name, in the order registered."""
    return dict(_REGISTRY)


def names() -> list[str]:
    return list(_REGISTRY)


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``; a :class:`UsageError` naming the others for an unknown one."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown dataset {name!r} (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def per_dataset(attribute: str) -> str:
    """``attribute``'s value per dataset, for help texts: one value, or ``SYSU-MM01 0.6, RegDB 0.3, ...``."""
    values = {ds.display: getattr(ds, attribute) for ds in _REGISTRY.values()}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{display} {value}" for display, value in values.items())


SYSU = register(Dataset(
    name="sysu", display="SYSU-MM01", layout="raw SYSU-MM01 folder (cam1..cam6, exp)", plan=sysu.plan_sysu,
    published=sysu.PUBLISHED, published_results=sysu.RESULTS,
    train=(Side("train_rgb", "visible"), Side("train_ir", "infrared")), settings=sysu.SETTINGS,
    trials=sysu.SYSU_TRIALS, eps=0.6, iters=200, top_k=20, full_rgb_batch_in_stage2=True, model_per_trial=False,
    epoch_setting="all", modes=sysu.SYSU_MODES))
REGDB = register(Dataset(
    name="regdb", display="RegDB", layout="raw RegDB folder (Visible/, Thermal/, idx/)", plan=regdb.plan_regdb,
    published=regdb.PUBLISHED, published_results=regdb.RESULTS, train=regdb.TRAIN, settings=regdb.SETTINGS,
    trials=regdb.REGDB_TRIALS, eps=0.3, iters=100, top_k=5,  # the release's train_regdb.py: heapq.nlargest(5, ...)
    full_rgb_batch_in_stage2=False, model_per_trial=True, epoch_setting="visible_to_thermal",
    train_order=regdb.release_train_order))
LLCM = register(Dataset(  # no release recipe: SYSU-MM01's settings (DESIGN.md section 9)
    name="llcm", display="LLCM", layout="raw LLCM folder (idx/, vis/, nir/, test_vis/, test_nir/)",
    plan=llcm.plan_llcm, published=llcm.PUBLISHED, train=(Side("train_rgb", "visible"), Side("train_ir", "infrared")),
    settings=llcm.SETTINGS, trials=llcm.LLCM_TRIALS, eps=0.6, iters=200, top_k=20, full_rgb_batch_in_stage2=True,
    model_per_trial=False, epoch_setting="visible_to_infrared", variants=llcm.VARIANTS))
