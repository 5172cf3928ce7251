"""Preparing a dataset (DESIGN.md sections 1, 10): a plan written as arrays and a manifest."""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from rpnr.common.command import Parser, run_command, script
from rpnr.common.errors import PreparedDataError
from rpnr.common.files import MANIFEST, fsync_folder, human_size, make_folder, os_error_line, sha256_file, write_json
from rpnr.data.prepared import FORMAT_VERSION, PreparePlan, small_arrays
from rpnr.data.published import PublishedStats, compare_published, format_published
from rpnr.data.raw import write_image_array
from rpnr.data.registry import get_dataset


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _recover_killed_runs(out: Path) -> None:
    """Remove the ``OUT.tmp-<pid>``/``OUT.old-<pid>`` of killed runs (an ``OUT.old-<pid>`` back to missing ``OUT``)."""
    for leftover in sorted(out.parent.glob(f"{out.name}.tmp-*")) + sorted(out.parent.glob(f"{out.name}.old-*")):
        suffix = leftover.name.rsplit("-", 1)[-1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or _pid_alive(int(suffix)):
            continue
        if leftover.name.startswith(f"{out.name}.old-") and not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_output_dir(out: Path, raw: Path, overwrite: bool) -> None:
    if out.resolve() == raw.resolve() or out.resolve() in raw.resolve().parents:
        raise PreparedDataError(f"--output-dir {out} is the raw dataset folder or holds it ({raw}); nothing was "
                                f"touched: choose an output folder outside the raw dataset")
    if out.exists() and not out.is_dir():
        raise PreparedDataError(f"output path {out} exists and is not a folder; choose another --output-dir")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not _prepared_here(out):
        raise PreparedDataError(f"output folder {out} is not empty and was not prepared by this project (no "
                                f"{MANIFEST} of ours); it is left alone: choose a new or empty --output-dir")
    if not overwrite:
        raise PreparedDataError(f"output folder {out} already holds prepared data (pass --overwrite to replace it)")


def _prepared_here(out: Path) -> bool:
    """Whether this project prepared ``out``: a manifest of ours, or a damaged one among nothing but our arrays."""
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int) and \
            isinstance(manifest.get("dataset"), str):
        return True
    entries = list(out.iterdir())
    return path.is_file() and any(p.name.endswith("_images.npy") for p in entries) and \
        all(p.name == MANIFEST or (p.suffix == ".npy" and p.is_file() and not p.is_symlink()) for p in entries)


def _check_free_space(plan: PreparePlan, folder: Path, height: int, width: int) -> None:
    images = sum(len(spec.paths) for spec in plan.sets)
    need = images * (height * width * 3 + 3 * 8 + 256) + sum(8 * len(a) for a in plan.arrays.values()) + (1 << 20)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise PreparedDataError(f"not enough space for the prepared arrays: they need about {human_size(need)}, "
                                f"{human_size(free)} free on {folder}")


def write_prepared(plan: PreparePlan, output_dir: str | os.PathLike, height: int, width: int, overwrite: bool = False,
                   workers: int | None = None, published: PublishedStats | None = None) -> dict:
    """Write every set of ``plan`` into ``OUT.tmp-<pid>``, renamed to ``output_dir`` at the end; the manifest."""
    if height <= 0 or width <= 0:
        raise PreparedDataError(f"image size must be positive, got {height}x{width}")
    out = Path(output_dir).absolute()
    _check_output_dir(out, Path(plan.root), overwrite)
    make_folder(out.parent)
    _recover_killed_runs(out)
    _check_free_space(plan, out.parent, height, width)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write_arrays(plan, tmp, height, width, workers, published or PublishedStats(plan.dataset))
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_folder(out.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        exc.filename = exc.filename or str(out)
        raise PreparedDataError(f"{os_error_line(exc)} (nothing was written)") from None
    return manifest


def _write_arrays(plan: PreparePlan, folder: Path, height: int, width: int, workers: int | None,
                  published: PublishedStats) -> dict:
    sets = {}
    for spec in plan.sets:
        write_image_array(folder / f"{spec.name}_images.npy", [os.path.join(plan.root, p) for p in spec.paths],
                          height, width, spec.resample, desc=f"{spec.name} ({spec.resample})", workers=workers)
        for part, values, dtype in (("pids", spec.pids, np.int64), ("cams", spec.cams, np.int64),
                                    ("paths", spec.paths, str)):
            np.save(folder / f"{spec.name}_{part}.npy", np.asarray(values, dtype=dtype))
        sets[spec.name] = {"count": len(spec.paths), "resample": spec.resample}
    for name, arr in plan.arrays.items():
        np.save(folder / f"{name}.npy", np.asarray(arr, dtype=np.int64))
    manifest = {"format_version": FORMAT_VERSION, "dataset": plan.dataset, "height": int(height), "width": int(width),
                "source": str(Path(plan.root).absolute()), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "sets": sets, "arrays": sorted(plan.arrays),
                "checksums": {name: sha256_file(folder / name) for name in small_arrays(sets, plan.arrays)},
                "stats": [{"split": split, "modality": modality, "ids": len(np.unique(pids)), "images": len(pids),
                           "cameras": np.unique(cams).tolist()} for split, modality, pids, cams in plan.views],
                "published_check": {"dataset": plan.dataset, **compare_published(published, plan.figures)},
                **plan.info}
    write_json(folder / MANIFEST, manifest)
    return manifest


def format_stats(manifest: dict) -> str:
    """The statistics table (ids, images, cameras per split and modality) of a manifest."""
    rows = [("split", "modality", "ids", "images", "cameras")] + [
        (s["split"], s["modality"], str(s["ids"]), str(s["images"]), ",".join(str(c) for c in s["cameras"]))
        for s in manifest["stats"]]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([f"{manifest['dataset']} prepared at {manifest['height']}x{manifest['width']} (HxW)", *lines])


def prepare_main(dataset: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """The command ``prepare_<dataset>.py``: the prepared arrays, the statistics table and the published check."""
    ds = get_dataset(dataset)
    parser = Parser(prog=ds.prepare_script, description=description or f"Prepare {ds.display}.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help=ds.layout)
    parser.add_argument("--output-dir", required=True, help="folder to create with the prepared arrays")
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that this project prepared earlier (any other non-empty "
                             "folder is refused and left alone)")
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: up to 8)")
    args = parser.parse_args(argv)

    def write() -> None:
        manifest = write_prepared(ds.plan(args.data_dir), args.output_dir, args.height, args.width, args.overwrite,
                                  args.workers, ds.published)
        print(format_stats(manifest), *format_published(manifest["published_check"]), f"wrote {args.output_dir}",
              sep="\n")

    return run_command(write, ds.prepare_script, lambda exc: f"interrupted; {args.output_dir} was left as it was"
                       if isinstance(exc, KeyboardInterrupt) else None)


def prepare_script(dataset: str, description: str) -> None:
    """Run ``prepare_<dataset>.py`` (SIGTERM ends it as Ctrl-C does: the temporary output removed)."""
    script(lambda: prepare_main(dataset, sys.argv[1:], description))
