"""Every setting of a training run, defined once (DESIGN.md sections 5 and 10): the :class:`TrainConfig` fields
and their help text are ``train.py``'s command line (:func:`build_parser`), their checks
(:func:`build_config`) and the run's saved "args"; dataset-dependent defaults come from the registry.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rpnr.command import Parser
from rpnr.datasets import get_dataset, names, per_dataset, registry
from rpnr.distributed import resolve_device
from rpnr.errors import DistributedError, TrainingError, UsageError  # noqa: F401 - TrainingError: re-exported
from rpnr.evaluation import PRECISIONS
from rpnr.files import BEST

# value checks of the numeric settings: name -> (test, what a failing value is told)
CHECKS = {"int>=1": (lambda v: v >= 1, "must be a positive integer"), ">0": (lambda v: v > 0, "must be positive"),
          ">=0": (lambda v: v >= 0, "must not be negative"), "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)")}


def _f(default, help: str, group: str = "running", **meta):
    """A setting: its default and metadata: the help text, the --help group, and ``flag``, ``short``,
    ``choices``, ``check``, ``dataset`` (the registry attribute giving the default), ``default_text`` (a
    default described in words), ``negation`` (a flag that sets the value "none"), ``recipe`` (DESIGN.md section
    12: False for a run setting, where and how a run ran, not what it computed; a function for a setting of which
    the recipe keeps a part; else the value is part of the recipe), ``stage`` (the one stage that uses it)."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **meta})


_SAMPLING, _LABELS, _INIT = "sampling and optimisation", "pseudo labels, memories and losses", "initialisation"
_ABLATION, _REQUIRED = "the paper's ablations (stage 2; README: paper row -> flags)", dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Modules:
    """The RPNR modules a run uses (the paper's ablation table; README: paper row -> flags): in stage 2 each of
    them unless its ``--no-*`` switch is given, none in stage 1. The one definition the labels, the objective and
    the logs read. MHL needs OTPM's matching, so ``--no-otpm`` also leaves out the hybrid memory."""

    npc: bool  # noisy pseudo-label calibration of the DBSCAN labels
    otpm: bool  # optimal-transport matching of the clusters -> the cross-modality term
    mhl: bool  # the hybrid memory and its term
    nrl: bool  # the neighbour relation loss

    @classmethod
    def of(cls, stage: str, no_npc: bool, no_nrl: bool, no_mhl: bool, no_otpm: bool) -> Modules:
        rpnr = stage == "rpnr"
        return cls(npc=rpnr and not no_npc, otpm=rpnr and not no_otpm, mhl=rpnr and not (no_mhl or no_otpm),
                   nrl=rpnr and not no_nrl)

    def off(self) -> list[str]:
        """The modules left out, in the paper's order (e.g. ["NPC", "NRL"])."""
        return [name.upper() for name, on in dataclasses.asdict(self).items() if not on]

    def loss_weights(self, cfg: TrainConfig) -> dict:
        """The weight of each loss term of the objective, None for a term that is left out (stage 2's terms in
        stage 1); the weighted terms sum to the total."""
        return {"ir": 1.0, "rgb": 1.0, "cross": cfg.w_cross if self.otpm else None,
                "hybrid": cfg.w_hybrid if self.mhl else None, "nrl": cfg.w_nrl if self.nrl else None}

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
            ds.display for ds in registry().values() if ds.full_rgb_batch_in_stage2) + ", else --batch-size / 2"))
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
    w_cross: float = _f(0.25, "cross-modality memory term weight (stage 2)", _LABELS, check=">=0", stage="rpnr")
    w_hybrid: float = _f(0.5, "hybrid memory term weight (stage 2)", _LABELS, check=">=0", stage="rpnr")
    w_nrl: float = _f(10.0, "neighbour relation loss weight (stage 2)", _LABELS, check=">=0", stage="rpnr")
    sigma: float = _f(1.0, "NRL kernel width (stage 2)", _LABELS, check=">0", stage="rpnr")
    delta: float = _f(1.0, "NRL margin (stage 2)", _LABELS, check=">=0", stage="rpnr")
    no_npc: bool = _f(False, "without NPC: train on the DBSCAN labels", _ABLATION)
    no_nrl: bool = _f(False, "without NRL: no neighbour relation loss", _ABLATION)
    no_mhl: bool = _f(False, "without MHL: no hybrid memory (its term and memory)", _ABLATION)
    no_otpm: bool = _f(False, "without OTPM: no cross-modality matching, so neither the cross-modality term nor "
                              "the hybrid memory", _ABLATION)
    imagenet: str | None = _f("torchvision", "ImageNet ResNet-50 weights that stage 1 starts from: 'torchvision' "
                              "(torchvision's ResNet50_Weights.IMAGENET1K_V1 through its cache, $TORCH_HOME) or a "
                              "local weight file", _INIT, negation="--no-imagenet",
                              negation_help="stage 1 from random weights",
                              recipe=lambda path: path is not None,  # ImageNet or random start, not the file
                              stage="baseline")
    baseline: str | None = _f(None, "stage-1 checkpoint that stage 2 starts from", _INIT,
                              default_text="model_best.pth.tar of stage 1's default --logs-dir", recipe=False,
                              stage="rpnr")
    resume: bool = _f(False, "continue the run in --logs-dir from its checkpoint.pth.tar, with its saved settings",
                      _INIT, recipe=False)
    overwrite: bool = _f(False, "start afresh in a --logs-dir that holds an earlier run: its outputs are removed "
                                "first", _INIT, recipe=False)
    device: str | None = _f(None, "cpu, cuda or cuda:N", default_text="cuda when available", recipe=False)
    seed: int = _f(1, "seed of every random generator", recipe=False)
    workers: int = _f(4, "threads that read training batches ahead", check=">=0", recipe=False)
    feature_batch_size: int = _f(256, "batch size of feature extraction", check="int>=1", recipe=False)
    test_trials: int = _f(10, "trials of the final test, for datasets with one model for every trial",
                          recipe=False)
    amp: bool = _f(True, "train in float32 on CUDA (default: bf16 autocast; the release trains in float32)",
                   flag="--no-amp")
    bn_splits: int | None = _f(None, "batch norm normalises each of this many slices of the training batch on its "
                               "own, as the release's nn.DataParallel on that many GPUs (1 = the whole batch)",
                               default_text="2, the release's two GPUs; under torchrun the number of processes",
                               check="int>=1")
    feature_precision: str = _f("tf32", "arithmetic of the clustering features on CUDA (tf32 = what the release's "
                                "PyTorch 1.8 did on Ampere and later GPUs); test embeddings are always float32",
                                choices=lambda: PRECISIONS)
    check: bool = _f(False, "check the settings, the prepared data, the start weights and the logs folder, print "
                            "one line and exit, creating and writing nothing", recipe=False)
    low_memory: bool = _f(False, "exact training in less memory: the batch-norm slices' features without a graph, "
                                 "the objective's gradient, then each slice again with a graph (one slice of "
                                 "activations at a time, one extra forward; DESIGN.md section 11)", recipe=False)
    compile: bool = _f(False, "torch.compile the model (off by default until measured on a GPU)")

    @property
    def modules(self) -> Modules:
        """The RPNR modules this run uses."""
        return Modules.of(self.stage, self.no_npc, self.no_nrl, self.no_mhl, self.no_otpm)


# a resumed run takes these from the command
CURRENT = ("data_dir", "logs_dir", "resume", "overwrite", "device", "check")
STARTED_FROM = ("imagenet", "baseline")  # a resumed run keeps the saved ones: the weights it started from
# settings that change what a run computes: a resumed run must keep them (DESIGN.md section 10)
COMPUTED = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in {
    *CURRENT, *STARTED_FROM, "dataset", "stage", "epochs", "workers", "feature_batch_size", "test_trials",
    "low_memory"})


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
    """The run's settings from the command line's ``values`` (field name -> value): defaults filled, every
    value checked (:class:`UsageError`). ``world``: the processes torchrun started (1 without torchrun)."""
    cfg = _fill_defaults(TrainConfig(**values), world)
    ds = get_dataset(cfg.dataset)
    for f in dataclasses.fields(TrainConfig):
        if "check" in f.metadata:
            test, told = CHECKS[f.metadata["check"]]
            _require(test(getattr(cfg, f.name)), f"--{f.name.replace('_', '-')} {told}, got {getattr(cfg, f.name)}")
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
    """Warnings about settings the command line gives (``given``) that this run does not use: those of the other
    stage, and ``--compile`` on the CPU (it compiles for minutes before the first iteration)."""
    stage = {"baseline": "stage 1 (--stage baseline)", "rpnr": "stage 2 (--stage rpnr)"}
    notes = [f"warning: {_flag_name(f.name)} applies to {stage[f.metadata['stage']]} only; this run ignores it"
             for f in dataclasses.fields(TrainConfig) if f.name in given and
             f.metadata.get("stage", cfg.stage) != cfg.stage and f.type != "bool"]
    if cfg.compile and cfg.device == "cpu":
        notes.append("warning: --compile on the CPU compiles for minutes before the first iteration (a tiny run "
                     "took 4 min 18 s instead of 1 min 10 s); leave it out unless you measure it")
    return notes


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def recipe(args: dict) -> dict:
    """What a run computed: its saved settings (run.json's "args") without the run settings, in field order; a
    setting the args lack (an older run) counts as its default."""
    args = {**setting_defaults(), **args}
    kept = {f.name: f.metadata.get("recipe", True) for f in dataclasses.fields(TrainConfig)}
    return {name: keep(args.get(name)) if callable(keep) else args.get(name) for name, keep in kept.items() if keep}


def setting_defaults() -> dict:
    """Each setting's default that is a value (not filled in from the dataset or the stage)."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default not in (None, _REQUIRED)}


def _flag(name: str, value) -> str:
    """A setting as its command-line flag (``amp`` is spelled ``--no-amp``)."""
    return f"--no-amp {not value}" if name == "amp" else f"--{name.replace('_', '-')} {value}"


def resumed_config(cfg: TrainConfig, saved: dict, given: frozenset[str], path: Path) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's, except the flags of ``CURRENT`` and the other
    flags the command gave (``given``); a given setting of ``COMPUTED`` that differs from the saved
    one is a :class:`UsageError` listing ``--flag saved -> given`` for each."""
    differ = [f"{_flag(k, saved[k])} -> {_flag(k, getattr(cfg, k)).split(' ', 1)[1]}"
              for k in COMPUTED if k in given and k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise UsageError(f"{path} was trained with other settings, so resuming would compute something else: "
                         f"{', '.join(differ)} (leave these flags out to resume with the saved values, or start "
                         f"afresh with --overwrite)")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(CURRENT) - (set(given) - set(STARTED_FROM))
    return dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in known})
