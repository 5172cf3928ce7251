"""Model construction, weight loading and the one loader of a trained model (DESIGN.md sections 2, 7 and 14)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, resnet50

from rpnr.common.checkpoints import load_checkpoint
from rpnr.common.errors import CheckpointError, MissingFileError, UsageError
from rpnr.common.files import BEST
from rpnr.models.agw import AGW, l2_normalize

__all__ = ["AGW", "Trained", "build_model", "convert_official_state_dict", "imagenet_file", "l2_normalize",
           "load_trained", "load_weights"]

IMAGENET_HINT = ("pass --imagenet torchvision (torchvision's ResNet-50 ImageNet weights through its cache), "
                 "--imagenet PATH (resnet50-0676ba61.pth or the release's resnet50-19c8e357.pth) or --no-imagenet "
                 "(random weights)")

# official prefix -> ours; the official keys this model lacks (unused ResNet layers, the classifier) are dropped
_OFFICIAL_PREFIXES = (
    ("visible_module.visible.conv1.", "visible_stem.conv1."), ("visible_module.visible.bn1.", "visible_stem.bn1."),
    ("thermal_module.thermal.conv1.", "infrared_stem.conv1."), ("thermal_module.thermal.bn1.", "infrared_stem.bn1."),
    *((f"base_resnet.base.layer{i}.", f"layer{i}.") for i in range(1, 5)),
    ("NL_2.", "nl2."), ("NL_3.", "nl3."), ("bottleneck.", "bottleneck."))
_OFFICIAL_UNUSED = ("visible_module.", "thermal_module.", "base_resnet.base.conv1.", "base_resnet.base.bn1.",
                    "base_resnet.base.fc.", "classifier.", "NL_1.", "NL_4.")


def build_model(arch: str = "agw", pretrained: str | None = None, bn_splits: int = 1) -> nn.Module:
    """The two-stream AGW ResNet-50; ``pretrained``: ImageNet weights (:func:`imagenet_file`), DESIGN.md section 2."""
    if arch != "agw":
        raise ValueError(f"unknown architecture {arch!r} (available: 'agw')")
    if int(bn_splits) < 1:
        raise ValueError(f"bn_splits must be a positive integer, got {bn_splits}")
    model = AGW(bn_splits=int(bn_splits))
    if pretrained is not None:
        load_imagenet(model, pretrained)
    return model


def imagenet_file(source: str) -> str:
    """The ImageNet ResNet-50 file of ``source`` (a path, or "torchvision": torch's cache), else MissingFileError."""
    if source != "torchvision":
        if not os.path.isfile(source):
            raise MissingFileError(f"ImageNet weights not found at {source}: {IMAGENET_HINT}")
        return source
    url = ResNet50_Weights.IMAGENET1K_V1.url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / Path(url).name
    if not path.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=Path(url).stem.split("-")[-1])
        except (OSError, RuntimeError) as exc:  # offline, forbidden folder, wrong hash
            reason = " ".join(str(getattr(exc, "reason", exc)).split())
            raise MissingFileError(f"torchvision's ImageNet ResNet-50 weights are not in torch's cache and cannot "
                                    f"be downloaded ({reason}): put {path.name} ({url}) into {cache}, or pass "
                                    f"--imagenet PATH or --no-imagenet") from None
    return str(path)


def load_imagenet(model: AGW, path: str | os.PathLike) -> None:
    """Initialise both stems and the shared layers from a torchvision ResNet-50 file."""
    state = load_checkpoint(imagenet_file(str(path)))
    state = state.get("state_dict", state)
    check_resnet50(state, path)
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("conv1.", "bn1.")):
            mapped.update({"visible_stem." + key: value, "infrared_stem." + key: value})
        elif key.startswith(("layer1.", "layer2.", "layer3.", "layer4.")):
            mapped[key] = value
    model.load_state_dict(mapped, strict=False)


def check_resnet50(state: Mapping, path: str | os.PathLike) -> None:
    """:class:`CheckpointError` naming the first problem unless ``state`` is torchvision's ResNet-50 state dict."""
    with torch.device("meta"):
        reference = {k: v for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    problem = next((f"{key} is not in the file" for key in reference
                    if key not in state and not key.endswith("num_batches_tracked")), None)
    for key, value in state.items():
        if problem or key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if key not in reference:
            problem = f"it holds {key}, which a ResNet-50 does not have (a deeper network?)"
        elif not isinstance(value, Tensor) or tuple(value.shape) != tuple(reference[key].shape):
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            problem = f"{key} has shape {shape}, a ResNet-50's is {list(reference[key].shape)} (a wider network?)"
        elif not value.is_floating_point():
            problem = f"{key} holds {value.dtype} values, not floating point"
    if problem:
        raise CheckpointError(f"{path} is not torchvision's ResNet-50 state dict: {problem}; {IMAGENET_HINT}")


def convert_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map the official release's keys (``module.visible_module.visible.*``, ...) to this model's."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        old, new = next(((o, n) for o, n in _OFFICIAL_PREFIXES if k.startswith(o)), ("", ""))
        if old:
            out[new + k[len(old) :]] = value
        elif not k.startswith(_OFFICIAL_UNUSED):
            out[k] = value  # reported as unexpected by load_weights
    return out


def load_weights(model: nn.Module, path: str | os.PathLike, ckpt: Mapping | None = None) -> None:
    """Load ``path``'s weights (``ckpt``: that file, loaded) into ``model`` strictly (layouts: DESIGN.md section 7)."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    state = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no model state dict")
    if any(k.startswith(("module.base_resnet.", "base_resnet.")) for k in state):  # the official release's layout
        state = convert_official_state_dict(state)
    own = model.state_dict()
    problems = (("missing keys", sorted(set(own) - set(state))), ("unexpected keys", sorted(set(state) - set(own))),
                ("keys of the wrong shape", sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)))
    parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})" for what, keys in problems if keys]
    if parts:
        raise CheckpointError(f"{path} does not fit the AGW model: " + "; ".join(parts))
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path} holds weights that are not finite (e.g. {bad}): it comes from a diverged "
                              f"run and is not used (retrain with a lower --lr)")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


@dataclass
class Trained:
    """A trained model (eval mode) and what its checkpoint records."""

    model: nn.Module
    path: str
    dataset: str | None  # None: a checkpoint that records nothing (the official release's)
    stage: str | None
    trial: int | None
    size: tuple[int, int] | None  # (height, width) it was trained at, or the one given for a checkpoint without
    record: dict  # its saved settings ("args"; {} for the release's)
    notes: list[str] = field(default_factory=list)  # lines for the command to print ("note: ...", "warning: ...")

    def check_size(self, data: str | os.PathLike, size: tuple[int, int]) -> None:
        """A warning note when the model was trained at another size than the images of ``data``."""
        if self.size is not None and tuple(self.size) != tuple(size):
            self.notes.append(f"warning: {self.path} was trained at {self.size[0]}x{self.size[1]} but {data} holds "
                              f"{size[0]}x{size[1]} images")


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu", dataset: str | None = None,
                 trial: int | None = None, size: tuple[int | None, int | None] = (None, None),
                 display: str = "", stage1: bool = False) -> Trained:
    """The model of checkpoint ``path`` on ``device``, in eval mode, with what it records; refused (DESIGN.md section
    14): another ``dataset`` or ``trial``, a stage-2 model for ``stage1``, a ``size`` that contradicts the recorded."""
    ckpt = load_checkpoint(path)
    args = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else {}
    recorded = "dataset" in ckpt
    if recorded and dataset is not None and ckpt["dataset"] != dataset:
        raise CheckpointError(f"{path} was trained on {ckpt['dataset']}, not {dataset}")
    if recorded and trial is not None and args.get("trial", trial) != trial:
        raise CheckpointError(f"{path} was trained on {display} trial {args['trial']}, not trial {trial}: its "
                              f"training identities include trial {trial}'s test identities")
    if stage1 and ckpt.get("stage", "baseline") != "baseline":
        raise CheckpointError(f"{path} is a stage-2 ({ckpt['stage']}) model; stage 2 starts from a stage-1 model: "
                              f"pass stage 1's {BEST} (train.py --stage baseline)")
    saved = (args.get("height"), args.get("width"))
    if None not in saved and None not in size and tuple(size) != saved:
        raise UsageError(f"--height/--width {size[0]}x{size[1]} contradict {path}, which was trained at "
                         f"{saved[0]}x{saved[1]}; leave them out (the checkpoint records its size)")
    model = build_model("agw")
    load_weights(model, path, ckpt)
    notes = [] if recorded else [f"note: {path} records no dataset, trial or image size (an official release "
                                 f"checkpoint?); used as given"]
    size = saved if None not in saved else None if None in size else tuple(size)
    return Trained(model.to(device).eval(), str(path), ckpt.get("dataset"), ckpt.get("stage"), args.get("trial"),
                   size, dict(args), notes)
