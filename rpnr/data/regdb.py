"""RegDB (DESIGN.md section 1; Nguyen et al., Sensors 2017): raw layout, order, settings, figures."""

import os
from collections import Counter

import numpy as np

from rpnr.common.errors import RawDataError
from rpnr.data.prepared import PreparePlan, SetSpec, Setting, Side
from rpnr.data.published import PublishedStats, published_results
from rpnr.data.raw import read_path_labels
from rpnr.metrics import eval_regdb

MODALITIES = ("visible", "thermal")
SPLITS = ("train", "test")
CAMERA = {"visible": 1, "thermal": 2}
SPLIT_RESAMPLE = {"train": "bicubic", "test": "lanczos"}  # official train / test loaders
REGDB_TRIALS = tuple(range(1, 11))
STEM = {"visible": "visible", "thermal": "infrared"}


def read_idx(root: str, split: str, modality: str, trial: int) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels int64)`` of one idx file, in file order; every file must exist."""
    return read_path_labels(root, os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt"),
                            "expected the RegDB layout with idx/{train,test}_{visible,thermal}_{1..10}.txt")


def plan_regdb(root: str) -> PreparePlan:
    """What ``prepare_regdb.py`` writes: each listed train (bicubic) and test (Lanczos) image once, trial indexes."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise RawDataError(f"RegDB folder not found: {root}")
    if not os.path.isdir(os.path.join(root, "idx")):
        raise RawDataError(f"missing folder {os.path.join(root, 'idx')} (expected the RegDB layout "
                           f"Visible/, Thermal/, idx/)")
    lists = {(split, modality, t): read_idx(root, split, modality, t)
             for t in REGDB_TRIALS for split in SPLITS for modality in MODALITIES}
    sets, arrays, views, stored = [], {}, [], []
    for split in SPLITS:
        for modality in MODALITIES:
            union = sorted({p for t in REGDB_TRIALS for p in lists[split, modality, t][0]})
            row = {p: i for i, p in enumerate(union)}
            cams = np.full(len(union), CAMERA[modality], dtype=np.int64)
            pids = np.full(len(union), -1, dtype=np.int64)  # labels differ per trial (idx files number ids 0..n-1)
            sets.append(SetSpec(f"{modality}_{split}", union, pids, cams, SPLIT_RESAMPLE[split]))
            for t in REGDB_TRIALS:
                paths, labels = lists[split, modality, t]
                arrays[f"trial{t}_{split}_{modality}_index"] = np.array([row[p] for p in paths], dtype=np.int64)
                arrays[f"trial{t}_{split}_{modality}_labels"] = labels
            paths, labels = lists[split, modality, REGDB_TRIALS[0]]
            views.append((f"{split} (trial {REGDB_TRIALS[0]})", modality, labels,
                          np.full(len(paths), CAMERA[modality])))
            folders = np.array([os.path.dirname(p) for p in union])  # ids counted as image folders
            stored.append((f"{split} (stored, trials 1-10)", modality, folders, cams))
    return PreparePlan("regdb", root, sets, arrays, views + stored, {"trials": list(REGDB_TRIALS)}, _figures(lists))


def _figures(lists: dict[tuple[str, str, int], tuple[list[str], np.ndarray]]) -> dict[str, list[int]]:
    """The counts that :data:`PUBLISHED` lists; an identity is an image folder, its images those any idx file lists."""
    figures: dict[str, list[int]] = {}
    folders: set[str] = set()
    for modality in MODALITIES:
        listed = {p for (_, m, _), (paths, _) in lists.items() if m == modality for p in paths}
        per_folder = Counter(os.path.basename(os.path.dirname(path)) for path in listed)
        folders.update(per_folder)
        figures[f"{modality} images per identity"] = list(per_folder.values())
    figures["identities"] = [len(folders)]
    for split in SPLITS:
        figures[f"{split} identities per trial"] = [len(np.unique(lists[split, "visible", t][1])) for t in REGDB_TRIALS]
        for modality in MODALITIES:
            figures[f"{split} {modality} images per trial"] = [len(lists[split, modality, t][0]) for t in REGDB_TRIALS]
    return figures


def release_train_order(pids: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Row order in which the release clusters RegDB training images: [N] int64, the string order of the names
    ``<label>_c1_<file name>`` it copies them to (DESIGN.md section 1, "Training order")."""
    names = [f"{pid}_c1_{os.path.basename(path)}" for pid, path in zip(np.asarray(pids).tolist(),
                                                                       np.asarray(paths).tolist())]
    return np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)


def _side(split: str, modality: str) -> Side:
    arrays = f"trial{{trial}}_{split}_{modality}"
    return Side(f"{modality}_{split}", STEM[modality], index=f"{arrays}_index", labels=f"{arrays}_labels")


def _eval(distmat, q_pids, g_pids, q_cams, g_cams):
    return eval_regdb(distmat, q_pids, g_pids)  # every camera differs: the cameras play no part


def _direction(query: str, gallery: str) -> Setting:
    return Setting(f"{query}_to_{gallery}", f"RegDB {query} to {gallery}", f"{query.title()} to {gallery.title()}",
                   _side("test", query), _side("test", gallery), _eval)


PUBLISHED = PublishedStats("RegDB", "Nguyen et al. Sensors 2017; Ye et al. 2018 trials", {
    "identities": 412, "visible images per identity": 10, "thermal images per identity": 10,
    "train identities per trial": 206, "test identities per trial": 206,
    "train visible images per trial": 2060, "train thermal images per trial": 2060,
    "test visible images per trial": 2060, "test thermal images per trial": 2060})

# the README's Average row, and the sd (ddof 1) of its ten per-trial rows (ten separately trained trials)
RESULTS = published_results("RPNR release README (XiangboYin/RPNR), RegDB table: mean of its 10 trials (one model "
                            "each), sd over those trials", {
    "visible_to_thermal": ((90.31, 1.87), (94.66, 1.42), (96.39, 1.24), (97.88, 0.84), (83.35, 1.81), (69.96, 2.30)),
    "thermal_to_visible": ((89.09, 1.72), (94.37, 1.41), (96.21, 1.17), (97.65, 0.90), (82.26, 1.91), (66.50, 2.26))})
TRAIN = (_side("train", "visible"), _side("train", "thermal"))
SETTINGS = (_direction("visible", "thermal"), _direction("thermal", "visible"))
