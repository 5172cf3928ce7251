"""Small synthetic raw dataset trees with real image files (tests and the demo): the drawing of persons
here, each dataset's tree writer beside its layout (``Dataset.write_synthetic``).

Each identity is a drawn pedestrian with its own shape and torso/leg textures (:class:`Identity`). Visible
images show them in the identity's colours; infrared/thermal images show the same shape and texture as grey-ish
intensities (3-channel, no colour), so identity is recognisable across modalities. Pose jitter, scale, flips,
camera-specific backgrounds, lighting and noise vary per image. Output is deterministic given the seed.

    python -m rpnr.data.synthetic --dataset <name> --out data/<name>_synth
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rpnr.command import Parser, run_command, script
from rpnr.datasets import registry
from rpnr.errors import UsageError


@dataclass
class Identity:
    """Appearance parameters of one synthetic person."""

    head: float  # head radius (fraction of the width)
    torso_w: float  # half width of the torso (fraction of the width)
    torso_end: float  # bottom of the torso (fraction of the height)
    leg_gap: float
    arm_w: float
    bag: int  # -1 left, 0 none, 1 right
    up_angle: float  # torso stripe orientation (radians)
    up_freq: float  # torso stripe frequency (cycles over the image)
    up_kind: int  # 0 stripes, 1 checker, 2 solid with a logo patch
    low_freq: float  # leg stripe frequency (0 = plain)
    colors: np.ndarray  # [5, 3] visible colours: torso a, torso b, legs, hair, bag
    ir_levels: np.ndarray  # [5] infrared intensities of the same parts


def make_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's appearance."""
    return Identity(
        head=float(rng.uniform(0.09, 0.15)), torso_w=float(rng.uniform(0.16, 0.28)),
        torso_end=float(rng.uniform(0.48, 0.62)), leg_gap=float(rng.uniform(0.01, 0.06)),
        arm_w=float(rng.uniform(0.04, 0.08)), bag=int(rng.integers(-1, 2)),
        up_angle=float(rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])), up_freq=float(rng.uniform(3.0, 9.0)),
        up_kind=int(rng.integers(0, 3)), low_freq=float(rng.choice([0.0, 0.0, 6.0, 10.0])),
        colors=rng.uniform(0.05, 0.95, size=(5, 3)), ir_levels=rng.uniform(0.25, 0.95, size=5))


def render(person: Identity, rng: np.random.Generator, height: int, width: int, infrared: bool,
           background: np.ndarray) -> np.ndarray:
    """One image of ``person`` -> uint8 [height, width, 3]; ``background`` is the camera's RGB base colour."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width  # [H, W] in [0, 1)
    scale = rng.uniform(0.88, 1.05)
    cx = 0.5 + rng.uniform(-0.08, 0.08)
    top = 0.04 + rng.uniform(-0.03, 0.04)
    if rng.random() < 0.5:
        x = 2 * cx - x  # mirror around the body axis
    yy = (y - top) / scale  # body coordinates
    xx = (x - cx) / scale
    head_cy = person.head * 0.9
    head = (xx / person.head) ** 2 + ((yy - head_cy) * 2.0 / person.head) ** 2 < 1.0
    hair = head & (yy < head_cy - person.head * 0.15)
    neck = head_cy + person.head * 0.5
    torso = (np.abs(xx) < person.torso_w) & (yy > neck) & (yy < person.torso_end)
    arms = (np.abs(xx) >= person.torso_w) & (np.abs(xx) < person.torso_w + person.arm_w) \
        & (yy > neck + 0.02) & (yy < person.torso_end + 0.05)
    legs = (np.abs(xx) > person.leg_gap) & (np.abs(xx) < person.torso_w * 0.9) \
        & (yy >= person.torso_end) & (yy < 0.95)
    bag = np.zeros_like(torso)
    if person.bag:
        bx = person.bag * (person.torso_w + person.arm_w + 0.05)
        bag = (np.abs(xx - bx) < 0.07) & (yy > 0.35) & (yy < 0.55)
    u = xx * np.cos(person.up_angle) + yy * np.sin(person.up_angle)
    if person.up_kind == 0:
        pattern = np.sin(2 * np.pi * person.up_freq * u) > 0
    elif person.up_kind == 1:
        pattern = (np.sin(2 * np.pi * person.up_freq * xx) * np.sin(2 * np.pi * person.up_freq * yy)) > 0
    else:
        pattern = (np.abs(xx) < person.torso_w * 0.5) & (np.abs(yy - (neck + person.torso_end) / 2) < 0.06)
    leg_pattern = np.sin(2 * np.pi * person.low_freq * yy) > 0.3 if person.low_freq else np.zeros_like(legs)

    light = rng.uniform(0.75, 1.15)
    if infrared:
        lv = person.ir_levels
        img = np.full((height, width), float(np.mean(background)) * 0.5, dtype=np.float32)
        img += (y * 0.15).astype(np.float32)  # [H, W] floor gradient
        img[legs] = lv[2] * np.where(leg_pattern[legs], 0.75, 1.0)
        img[torso | arms] = np.where(pattern, lv[0], lv[1])[torso | arms]
        img[bag] = lv[4]
        img[head] = 0.95
        img[hair] = lv[3] * 0.6
        img = np.repeat(img[:, :, None] * light, 3, axis=2) * (1.0 + rng.uniform(-0.04, 0.04, size=3))  # grey-ish
    else:
        col = person.colors
        img = np.full((height, width, 3), background, dtype=np.float32)
        img += (y[:, :, None] * 0.2 - 0.1).astype(np.float32)
        img[legs] = col[2] * np.where(leg_pattern[legs], 0.6, 1.0)[:, None]
        img[torso | arms] = np.where(pattern[:, :, None], col[0], col[1])[torso | arms]
        img[bag] = col[4]
        img[head] = (0.85, 0.65, 0.5)
        img[hair] = col[3] * 0.5
        img = img * light * (1.0 + rng.uniform(-0.06, 0.06, size=3))
    img = img + rng.normal(0.0, 0.03, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def background(rng: np.random.Generator) -> np.ndarray:
    """A camera's RGB base colour."""
    return rng.uniform(0.2, 0.8, size=3)


def new_folder(out: str | os.PathLike) -> Path:
    """``out`` as a Path, after checking that it does not exist or is an empty folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output folder {out} exists and is not empty; choose a new or empty --out")
    return out


def main(argv: list[str] | None = None) -> int:
    datasets = registry()
    sizes = sorted({name: None for ds in datasets.values() for name in ds.synthetic_sizes})
    parser = Parser(prog="python -m rpnr.data.synthetic", description="Write a small synthetic raw dataset tree.")
    parser.add_argument("--dataset", choices=list(datasets), required=True)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128, help="raw image height")
    parser.add_argument("--width", type=int, default=64, help="raw image width")
    for name in sizes:
        takes = ", ".join(f"{ds.display} {ds.synthetic_sizes[name]}" for ds in datasets.values()
                          if name in ds.synthetic_sizes)
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"(default: {takes})")
    args = parser.parse_args(argv)
    ds = datasets[args.dataset]
    given = {name: getattr(args, name) for name in sizes if getattr(args, name) is not None}

    def write() -> None:
        if min(args.height, args.width) < 16:
            raise UsageError("--height and --width must be at least 16")
        extra = sorted(given.keys() - ds.synthetic_sizes.keys())
        if extra:
            raise UsageError(f"--{extra[0].replace('_', '-')} does not apply to {ds.display}")
        counts = ds.write_synthetic(args.out, **{**ds.synthetic_sizes, **given}, height=args.height,
                                    width=args.width, seed=args.seed)
        print(f"wrote synthetic {args.dataset} to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    return run_command(write, "rpnr.data.synthetic", lambda exc: f"interrupted; {args.out} may hold a part of the "
                       f"tree: remove it" if isinstance(exc, KeyboardInterrupt) else None)


def __getattr__(name: str):
    """``write_<dataset>``: the registered dataset's tree writer (kept for earlier imports)."""
    if name.startswith("write_") and name[len("write_"):] in registry():
        return registry()[name[len("write_"):]].write_synthetic
    raise AttributeError(name)


if __name__ == "__main__":
    script(main)
