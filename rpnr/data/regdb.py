"""RegDB raw layout: ``Visible/``, ``Thermal/`` and ``idx/{train,test}_{visible,thermal}_{1..10}.txt``.

Each idx line is ``relative/path.bmp label``; trial t trains on the ``train_*_t`` lists and tests
on the ``test_*_t`` lists. Camera ids: visible = 1, thermal = 2.
"""

from __future__ import annotations

import os

import numpy as np

from rpnr.data.prepared import REGDB_TRIALS, PreparePlan, SetSpec
from rpnr.data.raw_images import RawDataError
from rpnr.data.raw_layout import read_path_labels

MODALITIES = ("visible", "thermal")
SPLITS = ("train", "test")
CAMERA = {"visible": 1, "thermal": 2}
SPLIT_RESAMPLE = {"train": "bicubic", "test": "lanczos"}  # official train / test loaders


def idx_path(root: str, split: str, modality: str, trial: int) -> str:
    """``root/idx/<split>_<modality>_<trial>.txt``."""
    return os.path.join(root, "idx", f"{split}_{modality}_{trial}.txt")


def read_idx(root: str, split: str, modality: str, trial: int) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels int64)`` of one idx file, in file order; every file must exist."""
    return read_path_labels(root, idx_path(root, split, modality, trial),
                            "expected the RegDB layout with idx/{train,test}_{visible,thermal}_{1..10}.txt")


def plan_regdb(root: str) -> PreparePlan:
    """What ``prepare_regdb.py`` writes: each image listed by a train file once (bicubic) and each
    image listed by a test file once (Lanczos), with per-trial index and label arrays."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise RawDataError(f"RegDB folder not found: {root}")
    if not os.path.isdir(os.path.join(root, "idx")):
        raise RawDataError(f"missing folder {os.path.join(root, 'idx')} (expected the RegDB layout "
                           f"Visible/, Thermal/, idx/)")
    lists = {(split, modality, t): read_idx(root, split, modality, t)
             for t in REGDB_TRIALS for split in SPLITS for modality in MODALITIES}
    sets, arrays, views = [], {}, []
    for split in SPLITS:
        for modality in MODALITIES:
            union = sorted({p for t in REGDB_TRIALS for p in lists[split, modality, t][0]})
            row = {p: i for i, p in enumerate(union)}
            cams = np.full(len(union), CAMERA[modality], dtype=np.int64)
            # identity labels differ per trial (idx files number ids 0..n-1); the set keeps -1
            pids = np.full(len(union), -1, dtype=np.int64)
            sets.append(SetSpec(f"{modality}_{split}", union, pids, cams, SPLIT_RESAMPLE[split]))
            for t in REGDB_TRIALS:
                paths, labels = lists[split, modality, t]
                arrays[f"trial{t}_{split}_{modality}_index"] = np.array([row[p] for p in paths], dtype=np.int64)
                arrays[f"trial{t}_{split}_{modality}_labels"] = labels
            paths, labels = lists[split, modality, REGDB_TRIALS[0]]
            views.append((f"{split} (trial {REGDB_TRIALS[0]})", modality, labels,
                          np.full(len(paths), CAMERA[modality])))
    for split in SPLITS:
        for modality in MODALITIES:
            spec = next(s for s in sets if s.name == f"{modality}_{split}")
            folders = np.array([os.path.dirname(p) for p in spec.paths])  # ids counted as image folders
            views.append((f"{split} (stored, trials 1-10)", modality, folders, spec.cams))
    return PreparePlan("regdb", root, sets, arrays, views, {"trials": list(REGDB_TRIALS)}, _figures(lists))


def _figures(lists: dict[tuple[str, str, int], tuple[list[str], np.ndarray]]) -> dict[str, list[int]]:
    """The counts that :data:`rpnr.data.published.PUBLISHED` lists for RegDB; an identity is an image
    folder (``Visible/<id>/``, ``Thermal/<id>/``), its images those listed by any idx file."""
    figures: dict[str, list[int]] = {}
    folders: set[str] = set()
    for modality in MODALITIES:
        listed = {p for (_, m, _), (paths, _) in lists.items() if m == modality for p in paths}
        per_folder: dict[str, int] = {}
        for path in listed:
            folder = os.path.basename(os.path.dirname(path))
            per_folder[folder] = per_folder.get(folder, 0) + 1
        folders.update(per_folder)
        figures[f"{modality} images per identity"] = list(per_folder.values())
    figures["identities"] = [len(folders)]
    for split in SPLITS:
        figures[f"{split} identities per trial"] = [len(np.unique(lists[split, "visible", t][1]))
                                                    for t in REGDB_TRIALS]
        for modality in MODALITIES:
            figures[f"{split} {modality} images per trial"] = [len(lists[split, modality, t][0])
                                                               for t in REGDB_TRIALS]
    return figures
