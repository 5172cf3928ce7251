"""Every setting of a training run, defined once (DESIGN.md sections 5, 10 and 12)."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from rpnr.common.command import Parser, check_values
from rpnr.common.errors import DistributedError, UsageError
from rpnr.common.files import BEST
from rpnr.data.registry import all_datasets, get_dataset, names, per_dataset
from rpnr.matching import MATCHERS
from rpnr.training import Term, active_terms

PRECISIONS = ("fp32", "tf32", "bf16")  # rpnr.evaluation.feature_precision's arithmetic


def _f(default, help: str, group: str = "running", **meta):
    """A setting: default, help, --help group and ``flag``, ``short``, ``choices``, ``check``, ``dataset`` (the
    registry attribute of its default), ``default_text``, ``negation`` (a flag setting "none"), ``recipe`` (False:
    a run setting, DESIGN.md section 12; a function: the part kept), ``stage`` (the one stage that uses it)."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **meta})


_SAMPLING, _LABELS, _INIT = "sampling and optimisation", "pseudo labels, memories and losses", "initialisation"
_ABLATION, _REQUIRED = "the paper's ablations (stage 2; README: paper row -> flags)", dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Ablation:
    """Which of the paper's modules a run uses: in stage 2 each unless its ``--no-*`` switch is given, none in stage 1;
    MHL needs OTPM's matching, so ``--no-otpm`` leaves out the hybrid memory too."""

    npc: bool  # noisy pseudo-label calibration of the DBSCAN labels
    otpm: bool  # the clusters' cross-modality matching and the cross-modality term
    mhl: bool  # the hybrid memory and its term
    nrl: bool  # the neighbour relation loss

    def off(self) -> list[str]:
        """The modules left out, in the paper's order (e.g. ["NPC", "NRL"])."""
        return [name.upper() for name, on in dataclasses.asdict(self).items() if not on]

    def describe(self, stage: str) -> str:
        """The log line that says which modules are off."""
        off = self.off()
        if stage != "rpnr":
            return f"stage 1 (baseline): the RPNR modules ({', '.join(off)}) are stage 2's; none runs"
        switches = [f"--no-{m.lower()}" for m in off if m != "MHL" or self.otpm]
        return (f"modules off: {', '.join(off)} ({' '.join(switches)}); the others run" if off else
                "modules: NPC, OTPM, MHL and NRL all run (no --no-* switch)")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run (plain values; stored as the checkpoint's "args")."""

    dataset: str = _f(_REQUIRED, "dataset to train on", short="-d", choices=names)
    stage: str = _f(_REQUIRED, "baseline = stage 1 (ImageNet start); rpnr = stage 2 (starts from --baseline)",
                    choices=lambda: ("baseline", "rpnr"))
    data_dir: str = _f(_REQUIRED, "prepared dataset folder (prepare_<dataset>.py)", recipe=False)
    logs_dir: str | None = _f(None, "output folder; '{trial}' is replaced by --trial",
                              default_text="baseline/<dataset>_s1 (stage 1) or logs/<dataset>_s2, plus /<trial> for "
                                           "datasets with one model per trial", recipe=False)
    trial: int = _f(1, "trial to train, for datasets with one model per trial (RegDB)", recipe=False)
    height: int = _f(288, "image height the data was prepared at")
    width: int = _f(144, "image width the data was prepared at")
    batch_size: int = _f(128, "infrared images per batch", _SAMPLING, short="-b", check="int>=1")
    rgb_batch_size: int | None = _f(None, "visible images per batch, each in two views", _SAMPLING, default_text=(
        lambda: "--batch-size in stage 2 on " + ", ".join(
            ds.display for ds in all_datasets().values() if ds.full_rgb_batch_in_stage2) + ", else --batch-size / 2"))
    num_instances: int = _f(16, "images per pseudo identity in a batch", _SAMPLING, check="int>=1")
    iters: int | None = _f(None, "iterations per epoch", _SAMPLING, dataset="iters", check="int>=1")
    epochs: int = _f(50, "epochs", _SAMPLING, check="int>=1")
    lr: float = _f(3.5e-4, "Adam learning rate", _SAMPLING, check=">0")
    weight_decay: float = _f(5e-4, "Adam weight decay", _SAMPLING, check=">=0")
    step_size: int = _f(20, "StepLR period in epochs", _SAMPLING, check="int>=1")
    gamma: float = _f(0.1, "StepLR factor", _SAMPLING, check=">0")
    eps: float | None = _f(None, "DBSCAN eps", _LABELS, dataset="eps", check=">0")
    k1: int = _f(30, "k-reciprocal neighbours of the Jaccard distance", _LABELS, check="int>=1")
    k2: int = _f(6, "query-expansion neighbours of the Jaccard distance", _LABELS, check="int>=1")
    min_samples: int = _f(4, "DBSCAN min_samples", _LABELS, check="int>=1")
    momentum: float = _f(0.1, "memory update momentum", _LABELS, check="[0,1)")
    temp: float = _f(0.05, "memory temperature", _LABELS, check=">0")
    top_k: int | None = _f(None, "NPC prototype members (stage 2; the release's train_regdb.py keeps 5)", _LABELS,
                           dataset="top_k", check="int>=1", stage="rpnr")
    ot_reg: float = _f(5.0, "Sinkhorn entropic regularisation (stage 2)", _LABELS, check=">0", stage="rpnr")
    matcher: str = _f("ot", "how the clusters of the two modalities are matched (stage 2; rpnr.matching.MATCHERS)",
                      _LABELS, choices=lambda: tuple(MATCHERS), stage="rpnr")
    w_cross: float = _f(0.25, "cross-modality memory term weight (stage 2)", _LABELS, check=">=0", stage="rpnr")
    w_hybrid: float = _f(0.5, "hybrid memory term weight (stage 2)", _LABELS, check=">=0", stage="rpnr")
    w_nrl: float = _f(10.0, "neighbour relation loss weight (stage 2)", _LABELS, check=">=0", stage="rpnr")
    sigma: float = _f(1.0, "NRL kernel width (stage 2)", _LABELS, check=">0", stage="rpnr")
    delta: float = _f(1.0, "NRL margin (stage 2)", _LABELS, check=">=0", stage="rpnr")
    no_npc: bool = _f(False, "without NPC: train on the DBSCAN labels", _ABLATION)
    no_nrl: bool = _f(False, "without NRL: no neighbour relation loss", _ABLATION)
    no_mhl: bool = _f(False, "without MHL: no hybrid memory (its term and memory)", _ABLATION)
    no_otpm: bool = _f(False, "without OTPM: no matching, so neither the cross-modality term nor the hybrid memory",
                       _ABLATION)
    imagenet: str | None = _f("torchvision", "ImageNet ResNet-50 of stage 1: 'torchvision' (IMAGENET1K_V1 through "
                              "torch's cache, $TORCH_HOME) or a weight file", _INIT, negation="--no-imagenet",
                              negation_help="stage 1 from random weights", stage="baseline",
                              recipe=lambda path: path is not None)  # ImageNet or random start, not the file
    baseline: str | None = _f(None, "stage-1 checkpoint that stage 2 starts from", _INIT,
                              default_text="model_best.pth.tar of stage 1's default --logs-dir", recipe=False,
                              stage="rpnr")
    resume: bool = _f(False, "continue the run in --logs-dir with its saved settings", _INIT, recipe=False)
    overwrite: bool = _f(False, "start afresh in a --logs-dir of an earlier run (its outputs removed)", _INIT,
                         recipe=False)
    device: str | None = _f(None, "cpu, cuda or cuda:N", default_text="cuda when available", recipe=False)
    seed: int = _f(1, "seed of every random generator", recipe=False)
    workers: int = _f(4, "threads that read training batches ahead", check=">=0", recipe=False)
    feature_batch_size: int = _f(256, "batch size of feature extraction", check="int>=1", recipe=False)
    test_trials: int = _f(10, "trials of the final test (datasets with one model for every trial)", recipe=False)
    amp: bool = _f(True, "train in float32 on CUDA (default: bf16 autocast; the release trains in float32)",
                   flag="--no-amp")
    bn_splits: int | None = _f(None, "batch norm per slice of the batch, as the release's DataParallel on that many "
                               "GPUs (1: the whole batch)", default_text="2; under torchrun the processes",
                               check="int>=1")
    feature_precision: str = _f("tf32", "clustering features' arithmetic on CUDA (tf32: the release's PyTorch 1.8)",
                                choices=lambda: PRECISIONS)
    check: bool = _f(False, "check settings, data, start weights and logs folder, then exit; writes nothing",
                     recipe=False)
    low_memory: bool = _f(False, "exact training holding one batch-norm slice of activations (DESIGN.md section 11)",
                          recipe=False)
    compile: bool = _f(False, "torch.compile the model (off by default until measured on a GPU)")

    @property
    def ablation(self) -> Ablation:
        """The paper's modules this run uses."""
        two = self.stage == "rpnr"
        return Ablation(npc=two and not self.no_npc, otpm=two and not self.no_otpm,
                        mhl=two and not (self.no_mhl or self.no_otpm), nrl=two and not self.no_nrl)

    @property
    def terms(self) -> list[Term]:
        """The terms of the objective this run computes (:func:`rpnr.training.active_terms`)."""
        return active_terms(self, dataclasses.asdict(self.ablation))


def _help(f: dataclasses.Field) -> str:
    """A field's help text with its real default, once."""
    meta, text = f.metadata, f.metadata["help"]
    default = per_dataset(meta["dataset"]) if "dataset" in meta else meta.get("default_text", f.default)
    default = default() if callable(default) else default
    return text if f.type in ("bool", bool) or default is dataclasses.MISSING else f"{text} (default: {default})"


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The command line of a training run, one option per :class:`TrainConfig` field."""
    parser = Parser(prog=prog, description="Train RPNR stage 1 (baseline) or stage 2 (rpnr).")
    parser.named = False  # its errors begin "error:", as every other line train.py stops with
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = [meta.get("flag", "--" + f.name.replace("_", "-")), *([meta["short"]] if "short" in meta else [])]
        kwargs = {"dest": f.name, "help": _help(f)}
        if f.type == "bool":
            kwargs.update(action="store_false" if meta.get("flag", "").startswith("--no-") else "store_true")
        else:
            kwargs.update(type={"int": int, "float": float}.get(f.type.split(" ")[0], str),
                          required=f.default is dataclasses.MISSING, default=f.default,
                          choices=meta["choices"]() if "choices" in meta else None)
        target = group.add_mutually_exclusive_group() if "negation" in meta else group
        target.add_argument(*flags, **kwargs)
        if "negation" in meta:
            target.add_argument(meta["negation"], dest=f.name, action="store_const", const="none",
                                help=meta["negation_help"])
    return parser


def named_settings(argv: list[str] | None = None) -> frozenset[str]:
    """The settings the command line names (a resumed run keeps the checkpoint's others)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return frozenset(vars(parser.parse_args(argv)))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _check_bn_splits(splits: int, world: int, batch: int, rgb_batch: int) -> None:
    """--bn-splits against the process count and the batch sizes."""
    _require(splits % world == 0, f"--bn-splits {splits} is not a multiple of the {world} processes torchrun "
                                  f"started (each process runs --bn-splits / processes of the slices)")
    _require(world <= 1 or (batch % splits == 0 and (2 * rgb_batch) % splits == 0),
             f"--bn-splits {splits} must divide the infrared batch ({batch}) and the two-view visible batch "
             f"({2 * rgb_batch}) when torchrun runs {world} processes")
    chunks = [-(-n // -(-n // splits)) for n in (batch, 2 * rgb_batch)]  # torch.chunk's count: ceil(n / ceil(n / s))
    _require(chunks[0] == chunks[1], f"--bn-splits {splits} cuts the infrared batch ({batch}) into {chunks[0]} "
                                     f"slices but the two-view visible batch ({2 * rgb_batch}) into {chunks[1]}")


def _fill_defaults(cfg: TrainConfig, world: int) -> TrainConfig:
    """The dataset's and stage's defaults of the settings left unset."""
    ds = get_dataset(cfg.dataset)
    rgb = cfg.batch_size if cfg.stage == "rpnr" and ds.full_rgb_batch_in_stage2 else cfg.batch_size // 2
    trial = f"/{cfg.trial}" if ds.model_per_trial else ""
    stage1 = f"baseline/{cfg.dataset}_s1{trial}"  # stage 1's default logs folder, where stage 2 finds its model
    filled = {"eps": ds.eps, "iters": ds.iters, "top_k": ds.top_k, "rgb_batch_size": rgb,
              "logs_dir": stage1 if cfg.stage == "baseline" else f"logs/{cfg.dataset}_s2{trial}",
              "bn_splits": world if world > 1 else 2, "baseline": f"{stage1}/{BEST}" if cfg.stage == "rpnr" else None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in filled.items() if getattr(cfg, k) is None})
    return dataclasses.replace(cfg, logs_dir=cfg.logs_dir.replace("{trial}", str(cfg.trial)),
                               baseline=cfg.baseline and cfg.baseline.replace("{trial}", str(cfg.trial)))


def build_config(values: dict, world: int = 1) -> TrainConfig:
    """The run's settings from the command line's ``values``: defaults filled, every value checked
    (:class:`UsageError`); ``world``: the processes torchrun started."""
    cfg = _fill_defaults(TrainConfig(**values), world)
    ds = get_dataset(cfg.dataset)
    check_values(*((flag_name(f.name), getattr(cfg, f.name), f.metadata["check"]) for f in dataclasses.fields(cfg)
                   if "check" in f.metadata))
    _require(cfg.batch_size % cfg.num_instances == 0,
             f"--batch-size {cfg.batch_size} is not divisible by --num-instances {cfg.num_instances}")
    _require(cfg.rgb_batch_size >= cfg.num_instances and cfg.rgb_batch_size % cfg.num_instances == 0,
             f"the visible batch ({cfg.rgb_batch_size} images) must be a positive multiple of --num-instances "
             f"{cfg.num_instances}; set --rgb-batch-size or --batch-size")
    _require(cfg.k2 <= cfg.k1, f"--k2 ({cfg.k2}) must not exceed --k1 ({cfg.k1})")
    _require(cfg.height >= 16 and cfg.width >= 16,
             f"--height/--width must be at least 16 pixels, got {cfg.height}x{cfg.width}")
    _require(1 <= cfg.test_trials <= len(ds.trials), f"--test-trials must be in 1..{len(ds.trials)}, got "
                                                      f"{cfg.test_trials}")
    _require(not (cfg.resume and cfg.overwrite), "pass either --resume (continue the run) or --overwrite (start "
                                                 "afresh), not both")
    _require(not ds.model_per_trial or cfg.trial in ds.trials,
             f"--trial must be in {ds.trials[0]}..{ds.trials[-1]} for {ds.display}, got {cfg.trial}")
    _check_bn_splits(cfg.bn_splits, world, cfg.batch_size, cfg.rgb_batch_size)
    try:
        cfg.device = resolve_device(cfg.device, world)
    except DistributedError as exc:
        raise UsageError(str(exc)) from None
    return _check_start(cfg)


def _check_start(cfg: TrainConfig) -> TrainConfig:
    """The ablations apply to stage 2 only; only stage 1 starts from ImageNet weights (or random ones: "none")."""
    ablations = [f"--{name.replace('_', '-')}" for name in ("no_npc", "no_nrl", "no_mhl", "no_otpm")
                 if getattr(cfg, name)]
    _require(cfg.stage == "rpnr" or not ablations, f"{', '.join(ablations)}: the ablations apply to stage 2 "
                                                   f"(--stage rpnr)")
    return dataclasses.replace(cfg, imagenet=None) if cfg.stage == "rpnr" or cfg.imagenet == "none" else cfg


def settings_notes(cfg: TrainConfig, given: frozenset[str]) -> list[str]:
    """Warnings about given settings this run does not use (the other stage's), and ``--compile`` on the CPU."""
    stage = {"baseline": "stage 1 (--stage baseline)", "rpnr": "stage 2 (--stage rpnr)"}
    notes = [f"warning: {flag_name(f.name)} applies to {stage[f.metadata['stage']]} only; this run ignores it"
             for f in dataclasses.fields(TrainConfig) if f.name in given and
             f.metadata.get("stage", cfg.stage) != cfg.stage and f.type != "bool"]
    if cfg.compile and cfg.device == "cpu":
        notes.append("warning: --compile on the CPU compiles for minutes before the first iteration (a tiny run "
                     "took 4 min 18 s instead of 1 min 10 s); leave it out unless you measure it")
    return notes


def flag_name(name: str) -> str:
    """A setting's flag (``amp`` is spelled ``--no-amp``)."""
    return "--no-amp" if name == "amp" else "--" + name.replace("_", "-")


def recipe(args: dict) -> dict:
    """What a run computed: its saved settings without the run settings (an absent one counts as its default)."""
    args = {**setting_defaults(), **args}
    kept = {f.name: f.metadata.get("recipe", True) for f in dataclasses.fields(TrainConfig)}
    return {name: keep(args.get(name)) if callable(keep) else args.get(name) for name, keep in kept.items() if keep}


def setting_defaults() -> dict:
    """Each setting's default that is a value (not filled in from the dataset or the stage)."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default not in (None, _REQUIRED)}


def resolve_device(name: str | None, world: int = 1, local_rank: int = 0, local_world: int = 1,
                   torchrun: bool = False) -> str:
    """The device this process computes on (None: CUDA when available), checked against the machine; under torchrun
    process k of a machine takes ``cuda:k``. One that cannot work is a :class:`DistributedError`."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DistributedError(f"--device {name!r} is not a device (use cpu, cuda or cuda:N)") from None
    if dev.type != "cuda":
        if dev.type != "cpu":
            raise DistributedError(f"--device {name!r}: use cpu, cuda or cuda:N")
        return name
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise DistributedError(f"--device {name}: CUDA is not available on this machine")
    if dev.index is not None and world > 1:
        raise DistributedError(f"--device {name}: under torchrun pass --device cuda; process k of a machine takes "
                               f"cuda:k")
    if dev.index is not None and dev.index >= available:
        raise DistributedError(f"--device {name}: only {available} CUDA device(s)")
    if dev.index is not None or not torchrun:
        return name
    if available < local_world:
        raise DistributedError(f"--device cuda with {local_world} processes per machine, but this machine has "
                               f"{available} CUDA device(s); pass --nproc_per_node {max(available, 1)} or fewer")
    return f"cuda:{local_rank}"
