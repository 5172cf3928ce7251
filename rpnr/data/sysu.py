"""SYSU-MM01 (DESIGN.md section 1; Wu et al., ICCV 2017): raw layout, splits, settings, figures."""

import os

import numpy as np

from rpnr.common.errors import RawDataError
from rpnr.data.prepared import PreparePlan, SetSpec, Setting, Side
from rpnr.data.published import PublishedStats, published_results
from rpnr.data.raw import Split, cam_split, folder_images, read_id_line, sample_folder_images
from rpnr.metrics import eval_sysu, sysu_ignored

RGB_CAMS, IR_CAMS = (1, 2, 4, 5), (3, 6)  # camera numbers
RGB_CAMERAS, IR_CAMERAS = tuple(f"cam{k}" for k in RGB_CAMS), tuple(f"cam{k}" for k in IR_CAMS)
QUERY_CAMERAS = IR_CAMERAS  # the same for both modes (official)
GALLERY_CAMERAS = {"all": RGB_CAMERAS, "indoor": ("cam1", "cam2")}
ALL_CAMERAS = tuple(f"cam{i}" for i in range(1, 7))
SYSU_MODES = ("all", "indoor")
SYSU_TRIALS = tuple(range(10))


def read_ids(root: str, split: str) -> list[str]:
    """Ids of ``exp/<split>_id.txt`` as 4-digit strings, in file order (the first line only, as the official code)."""
    if not os.path.isdir(root):
        raise RawDataError(f"SYSU-MM01 folder not found: {root}")
    return read_id_line(os.path.join(root, "exp", f"{split}_id.txt"),
                        "expected the SYSU-MM01 layout with exp/train_id.txt, exp/val_id.txt, exp/test_id.txt")


def _check_mode(mode: str) -> None:
    if mode not in SYSU_MODES:
        raise ValueError(f"mode must be 'all' or 'indoor', got {mode!r}")


def query_split(root: str, mode: str = "all") -> Split:
    """IR query images of the test ids (cam3 then cam6 per id, ids in sorted order, files sorted)."""
    _check_mode(mode)
    return cam_split(folder_images(root, QUERY_CAMERAS, read_ids(root, "test")))


def gallery_split(root: str, mode: str = "all", trial: int = 0) -> Split:
    """RGB gallery of ``trial``: one random image per (test id, RGB camera), as the official code."""
    _check_mode(mode)
    return cam_split(sample_folder_images(root, GALLERY_CAMERAS[mode], read_ids(root, "test"), trial))


def train_split(root: str) -> tuple[Split, Split]:
    """``(rgb, ir)`` training images of train + val ids (official pre-processing order)."""
    ids = read_ids(root, "train") + read_ids(root, "val")
    return cam_split(folder_images(root, RGB_CAMERAS, ids)), cam_split(folder_images(root, IR_CAMERAS, ids))


def check_layout(root: str) -> None:
    """Raise :class:`RawDataError` for a missing folder/id file or an id of a split file without images."""
    if not os.path.isdir(root):
        raise RawDataError(f"SYSU-MM01 folder not found: {root}")
    for cameras, kind in ((RGB_CAMERAS, "RGB"), (IR_CAMERAS, "IR")):
        if not any(os.path.isdir(os.path.join(root, cam)) for cam in cameras):
            raise RawDataError(f"missing folders {', '.join(os.path.join(root, c) for c in cameras)} "
                               f"({kind} cameras of the SYSU-MM01 layout camN/<id>/<file>.jpg)")
    for split in ("train", "val", "test"):
        for pid in read_ids(root, split):
            dirs = [os.path.join(root, cam, pid) for cam in ALL_CAMERAS]
            if not any(os.path.isdir(d) and os.listdir(d) for d in dirs):
                raise RawDataError(f"id {int(pid)} of exp/{split}_id.txt has no images in any of "
                                   f"{os.path.join(root, 'cam1..cam6', pid)}")


def plan_sysu(root: str) -> PreparePlan:
    """What ``prepare_sysu.py`` writes: train sets (bicubic), query and gallery union (Lanczos)."""
    root = os.fspath(root)
    check_layout(root)
    rgb, ir = train_split(root)
    query = query_split(root, "all")
    galleries = {(mode, t): gallery_split(root, mode, t) for mode in SYSU_MODES for t in SYSU_TRIALS}
    union = sorted({p for g in galleries.values() for p in g.paths})
    row = {p: i for i, p in enumerate(union)}
    gal = cam_split(union)
    arrays = {f"gallery_index_{mode}_{t}": np.array([row[p] for p in g.paths], dtype=np.int64)
              for (mode, t), g in galleries.items()}
    sets = [SetSpec(name, *cam_split(paths, root), resample) for name, paths, resample in (  # paths relative to root
        ("train_rgb", rgb.paths, "bicubic"), ("train_ir", ir.paths, "bicubic"), ("query", query.paths, "lanczos"),
        ("gallery", union, "lanczos"))]
    views = [("train", "RGB", rgb.pids, rgb.cams), ("train", "IR", ir.pids, ir.cams),
             ("query", "IR", query.pids, query.cams),
             *[(f"gallery {m} (trial 0)", "RGB", galleries[m, 0].pids, galleries[m, 0].cams) for m in SYSU_MODES],
             ("gallery union (trials 0-9)", "RGB", gal.pids, gal.cams)]
    info = {"modes": list(SYSU_MODES), "gallery_trials": list(SYSU_TRIALS)}
    return PreparePlan("sysu", root, sets, arrays, views, info, _figures(rgb, ir, query, galleries))


def _figures(rgb: Split, ir: Split, query: Split, galleries: dict[tuple[str, int], Split]) -> dict[str, list[int]]:
    test_ids = np.unique(np.concatenate([query.pids] + [g.pids for g in galleries.values()]))
    return {
        "train identities": [len(np.unique(np.concatenate([rgb.pids, ir.pids])))],
        "train visible images": [len(rgb.paths)], "train infrared images": [len(ir.paths)],
        "test identities": [len(test_ids)], "query infrared images": [len(query.paths)],
        **{f"{mode}-search gallery images per trial": [len(galleries[mode, t].paths) for t in SYSU_TRIALS]
           for mode in SYSU_MODES},
    }


def _setting(mode: str) -> Setting:
    return Setting(mode, f"SYSU-MM01 {mode}-search", f"({mode}-search)", Side("query", "infrared"),
                   Side("gallery", "visible", index=f"gallery_index_{mode}_{{trial}}"), eval_sysu, sysu_ignored)


# the README's Average row, and the sd (ddof 1) of its ten per-trial rows (ten galleries of one model)
RESULTS = published_results("RPNR release README (XiangboYin/RPNR), SYSU-MM01 table: mean of its 10 gallery trials of "
                            "one model, sd over those trials", {
    "all": ((65.49, 1.13), (87.48, 0.96), (93.29, 1.02), (97.14, 0.68), (59.97, 1.27), (44.02, 1.76)),
    "indoor": ((68.46, 1.64), (89.67, 1.51), (94.75, 0.92), (97.89, 0.81), (73.01, 1.49), (68.61, 1.75))})
PUBLISHED = PublishedStats("SYSU-MM01", "Wu et al. ICCV 2017; RPNR release log", {
    "train identities": 395, "train visible images": 22258, "train infrared images": 11909, "test identities": 96,
    "query infrared images": 3803, "all-search gallery images per trial": 301,
    "indoor-search gallery images per trial": 112})
SETTINGS = tuple(_setting(mode) for mode in SYSU_MODES)
