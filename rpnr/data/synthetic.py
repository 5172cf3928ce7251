"""Small synthetic raw dataset trees of colour-grid identities, in the raw layouts of SYSU-MM01, RegDB and LLCM (tests,
benchmarks, the demo); deterministic given the seed: ``python -m rpnr.data.synthetic --dataset <name> --out <dir>``."""

import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rpnr.common.command import Parser, run_command, script
from rpnr.common.errors import UsageError
from rpnr.data.llcm import LLCM_NIR_CAMS, LLCM_VIS_CAMS
from rpnr.data.regdb import MODALITIES, REGDB_TRIALS
from rpnr.data.sysu import IR_CAMS, RGB_CAMS

LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")


@dataclass
class Identity:
    """One synthetic identity: a coarse grid of coloured blocks, told apart by a network from the start of training
    (drawn people differing in small details were not, issue 29)."""

    colors: np.ndarray  # [6, 3, 3]: the RGB colour of each block, rows top to bottom
    gamma: float  # infrared image = the pattern's luminance ** gamma


def make_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity."""
    return Identity(colors=rng.uniform(0.0, 1.0, size=(6, 3, 3)), gamma=float(np.exp(rng.uniform(-0.35, 0.35))))


def render(person: Identity, rng: np.random.Generator, height: int, width: int, infrared: bool,
           background: np.ndarray) -> np.ndarray:
    """One image of ``person`` -> uint8 [height, width, 3]: the grid shifted, its intensity scaled, noise added, tinted
    by the camera's ``background`` colour; infrared: the luminance raised to the identity's gamma."""
    rows, cols = person.colors.shape[:2]
    ys = np.clip(((np.arange(height) + 0.5) / height * rows + rng.uniform(-0.3, 0.3)).astype(int), 0, rows - 1)
    xs = np.clip(((np.arange(width) + 0.5) / width * cols + rng.uniform(-0.3, 0.3)).astype(int), 0, cols - 1)
    img = person.colors[ys][:, xs]  # [H, W, 3]
    if infrared:
        img = np.repeat((img @ LUMINANCE)[:, :, None] ** person.gamma, 3, axis=2)  # [H, W, 3] grey
    tint = background.mean() if infrared else background  # [3] or grey
    img = (0.85 * img + 0.15 * tint) * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.03, size=img.shape)
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


def write_sysu(out: str | os.PathLike, train_ids: int = 24, val_ids: int = 8, test_ids: int = 12,
               per_camera: int = 5, height: int = 128, width: int = 64, seed: int = 0) -> dict:
    """Write a raw SYSU-MM01-layout tree (JPEG); returns {"ids", "rgb_images", "ir_images"}."""
    if min(train_ids, test_ids, per_camera) < 1 or val_ids < 0:
        raise UsageError("id and image counts must be positive")
    out = new_folder(out)
    rng = np.random.default_rng(seed)
    total = train_ids + val_ids + test_ids
    ids = rng.permutation(np.arange(1, total + 1))
    splits = {"train": ids[:train_ids], "val": ids[train_ids:train_ids + val_ids], "test": ids[train_ids + val_ids:]}
    (out / "exp").mkdir(parents=True, exist_ok=True)
    for name, members in splits.items():
        (out / "exp" / f"{name}_id.txt").write_text(",".join(str(int(i)) for i in members) + "\n")
    backgrounds = {cam: background(rng) for cam in RGB_CAMS + IR_CAMS}
    counts = {"ids": total, "rgb_images": 0, "ir_images": 0}
    for pid in range(1, total + 1):
        person_rng = np.random.default_rng([seed, pid])
        person = make_identity(person_rng)
        drop = int(person_rng.integers(0, 2 * len(RGB_CAMS)))  # half the identities miss one visible camera
        rgb_cams = [c for i, c in enumerate(RGB_CAMS) if i != drop]
        ir_cams = [c for c in IR_CAMS if person_rng.random() > 0.1] or [3]
        for cam in sorted(rgb_cams + ir_cams):
            folder = out / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            n = max(2, per_camera + int(person_rng.integers(-1, 2)))
            infrared = cam in IR_CAMS
            for k in range(1, n + 1):
                img = render(person, person_rng, height, width, infrared, backgrounds[cam])
                Image.fromarray(img, "RGB").save(folder / f"{k:04d}.jpg", quality=92)
            counts["ir_images" if infrared else "rgb_images"] += n
    return counts


def write_regdb(out: str | os.PathLike, ids: int = 40, per_modality: int = 10, height: int = 128,
                width: int = 64, seed: int = 0) -> dict:
    """Write a raw RegDB-layout tree (BMP) with idx files for trials 1..10 (ids split in half per trial); counts."""
    if ids < 2 or per_modality < 1:
        raise UsageError("RegDB needs at least 2 ids and one image per modality")
    out = new_folder(out)
    rng = np.random.default_rng(seed)
    bg_visible, bg_thermal = background(rng), background(rng)
    files: dict[int, dict[str, list[str]]] = {}
    for pid in range(1, ids + 1):
        person_rng = np.random.default_rng([seed, pid])
        person = make_identity(person_rng)
        files[pid] = {}
        for modality, folder, tag, bg in (("visible", "Visible", "v", bg_visible),
                                          ("thermal", "Thermal", "t", bg_thermal)):
            (out / folder / str(pid)).mkdir(parents=True, exist_ok=True)
            names = []
            for k in range(1, per_modality + 1):
                img = render(person, person_rng, height, width, modality == "thermal", bg)
                rel = f"{folder}/{pid}/{tag}_{pid:04d}_{k:02d}.bmp"
                Image.fromarray(img, "RGB").save(out / rel)
                names.append(rel)
            files[pid][modality] = names
    (out / "idx").mkdir(exist_ok=True)
    for trial in REGDB_TRIALS:
        perm = np.random.default_rng([seed, 1000 + trial]).permutation(np.arange(1, ids + 1))
        for split, members in (("train", sorted(perm[:ids // 2])), ("test", sorted(perm[ids // 2:]))):
            for modality in MODALITIES:
                lines = [f"{rel} {label}" for label, pid in enumerate(members) for rel in files[pid][modality]]
                (out / "idx" / f"{split}_{modality}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return {"ids": ids, "visible_images": ids * per_modality, "thermal_images": ids * per_modality}


def _llcm_cameras(rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """``(visible, infrared)`` cameras of one LLCM identity: 2-4 visible, 1-3 infrared, one shared when it can and
    one not shared (every query finds its identity in another camera, as the release's evaluation assumes)."""
    visible = sorted(int(c) for c in rng.choice(LLCM_VIS_CAMS, size=int(rng.integers(2, 5)), replace=False))
    shared = [c for c in visible if c in LLCM_NIR_CAMS][:1]
    others = [c for c in LLCM_NIR_CAMS if c not in shared]
    drawn = {int(c) for c in rng.choice(others, size=int(rng.integers(1, 3)), replace=False)}
    return visible, sorted(drawn | set(shared))


def write_llcm(out: str | os.PathLike, train_ids: int = 16, test_ids: int = 8, per_camera: int = 3,
               height: int = 128, width: int = 64, seed: int = 0) -> dict:
    """Write a raw LLCM-layout tree (JPEG, file names as LLCM's, ``test_nir/cam3`` empty); returns image counts."""
    if train_ids < 1 or test_ids < 1 or per_camera < 1:
        raise UsageError("LLCM needs at least one training id, one test id and one image per camera")
    out = new_folder(out)
    rng = np.random.default_rng(seed)
    total = train_ids + test_ids
    ids = rng.permutation(np.arange(1, total + 1))
    train_set, test_order = sorted(int(i) for i in ids[:train_ids]), [int(i) for i in ids[train_ids:]]
    backgrounds = {(tag, cam): background(rng) for tag in ("vis", "nir") for cam in LLCM_VIS_CAMS}
    lists: dict[str, list[tuple[int, int, str]]] = {"vis": [], "nir": []}  # (camera, pid, line)
    counts = {"ids": total, "train_visible": 0, "train_infrared": 0, "test_visible": 0, "test_infrared": 0}
    for pid in range(1, total + 1):
        person_rng = np.random.default_rng([seed, pid])
        person = make_identity(person_rng)
        training = pid in train_set
        for (tag, modality), cams in zip((("vis", "visible"), ("nir", "infrared")), _llcm_cameras(person_rng)):
            for cam in cams:
                folder = out / (f"{tag}/{pid:04d}" if training else f"test_{tag}/cam{cam}/{pid:04d}")
                folder.mkdir(parents=True, exist_ok=True)
                sequence = int(person_rng.integers(100000, 240000))
                for k in range(max(1, per_camera + int(person_rng.integers(-1, 2)))):
                    frame = 1000 + 37 * k + int(person_rng.integers(0, 30))
                    name = f"{pid:04d}_c{cam:02d}_s{sequence}_f{frame}_{tag}.jpg"
                    img = render(person, person_rng, height, width, tag == "nir", backgrounds[tag, cam])
                    Image.fromarray(img, "RGB").save(folder / name, quality=92)
                    if training:
                        lists[tag].append((cam, pid, f"{tag}/{pid:04d}/{name} {train_set.index(pid)}"))
                    counts[f"{'train' if training else 'test'}_{modality}"] += 1
    (out / "test_nir" / "cam3").mkdir(parents=True, exist_ok=True)
    (out / "idx").mkdir(exist_ok=True)
    for tag, lines in lists.items():  # listed camera by camera (so not sorted by path)
        (out / "idx" / f"train_{tag}.txt").write_text("\n".join(line for *_, line in sorted(lines)) + "\n")
    (out / "idx" / "test_id.txt").write_text(",".join(str(i) for i in test_order) + "\n")
    return counts


WRITERS = {"sysu": write_sysu, "regdb": write_regdb, "llcm": write_llcm}


def main(argv: list[str] | None = None) -> int:
    sizes = {name: {n: p.default for n, p in inspect.signature(writer).parameters.items()
                    if n not in ("out", "height", "width", "seed")} for name, writer in WRITERS.items()}
    parser = Parser(prog="python -m rpnr.data.synthetic", description="Write a small synthetic raw dataset tree.")
    parser.add_argument("--dataset", choices=list(WRITERS), required=True)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128, help="raw image height")
    parser.add_argument("--width", type=int, default=64, help="raw image width")
    for size in sorted({n for named in sizes.values() for n in named}):
        takes = ", ".join(f"{name} {named[size]}" for name, named in sizes.items() if size in named)
        parser.add_argument(f"--{size.replace('_', '-')}", type=int, default=None, help=f"(default: {takes})")
    args = parser.parse_args(argv)
    given = {n: v for n, v in vars(args).items() if v is not None and n in set().union(*sizes.values())}

    def write() -> None:
        if min(args.height, args.width) < 16:
            raise UsageError("--height and --width must be at least 16")
        extra = sorted(given.keys() - sizes[args.dataset].keys())
        if extra:
            raise UsageError(f"--{extra[0].replace('_', '-')} does not apply to {args.dataset}")
        counts = WRITERS[args.dataset](args.out, **given, height=args.height, width=args.width, seed=args.seed)
        print(f"wrote synthetic {args.dataset} to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    return run_command(write, "rpnr.data.synthetic", lambda exc: f"interrupted; {args.out} may hold a part of the "
                       f"tree: remove it" if isinstance(exc, KeyboardInterrupt) else None)


if __name__ == "__main__":
    script(main)
