"""Pieces the raw layouts share: id files, ``<relative path> <label>`` lists (RegDB, LLCM training), camera folders.

SYSU-MM01 (``cam<k>/<pid>/``) and the LLCM test images (``test_{vis,nir}/cam<k>/<pid>/``) share the official
test protocol of the AGW/DEEN code base (DESIGN.md sections 1 and 9): an id file of one comma-separated line,
queries = every image of the test ids (:func:`folder_images`), one gallery image per (id, camera folder) and
trial (:func:`sample_folder_images`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rpnr.data.raw_images import RawDataError


class Split(NamedTuple):
    """Image paths with their identity and camera ids."""

    paths: list[str]
    pids: np.ndarray  # int64 [N]
    cams: np.ndarray  # int64 [N]


def read_id_line(path: str, missing_hint: str) -> list[str]:
    """Ids of an id file as 4-digit strings, in file order: the first line only, as the official code (DESIGN.md
    section 1); ``missing_hint`` completes the error for a missing file."""
    if not os.path.isfile(path):
        raise RawDataError(f"missing {path} ({missing_hint})")
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].strip():
        raise RawDataError(f"{path} is empty (expected one line of comma-separated ids)")
    try:
        ids = [int(y) for y in lines[0].split(",")]
    except ValueError:
        raise RawDataError(f"{path}: first line is not a comma-separated list of integer ids") from None
    return [f"{x:04d}" for x in ids]  # the official "%04d" % x


def cam_split(paths: list[str], root: str | None = None) -> Split:
    """``paths`` ending in ``cam<k>/<pid>/<file>``, with pid = the id folder and camera = k; relative to ``root``
    when it is given."""
    paths = paths if root is None else [os.path.relpath(p, root) for p in paths]
    folders = [p.split(os.sep)[-3:-1] for p in paths]
    return Split(paths, np.array([int(pid) for _, pid in folders], dtype=np.int64),
                 np.array([int(cam[3:]) for cam, _ in folders], dtype=np.int64))


def sorted_files(img_dir: str) -> list[str]:
    """``sorted(img_dir + '/' + name)`` over the folder's entries, as the official code builds them."""
    return sorted([img_dir + "/" + name for name in os.listdir(img_dir)])


def _id_folders(root: str, folders: Sequence[str], ids: Sequence[str]) -> Iterator[str]:
    """The existing ``os.path.join(root, folder, pid)`` folders: ids in sorted order, then ``folders`` in
    the given order (the official visiting order)."""
    for pid in sorted(ids):
        for folder in folders:
            img_dir = os.path.join(root, folder, pid)
            if os.path.isdir(img_dir):
                yield img_dir


def folder_images(root: str, folders: Sequence[str], ids: Sequence[str]) -> list[str]:
    """Every image of the :func:`_id_folders`, files sorted (:func:`sorted_files`): the official query order."""
    return [file for img_dir in _id_folders(root, folders, ids) for file in sorted_files(img_dir)]


def sample_folder_images(root: str, folders: Sequence[str], ids: Sequence[str], trial: int) -> list[str]:
    """One image per (id, folder) in :func:`folder_images`' order: the official gallery of ``trial``, drawn by
    ``random.Random(trial).choice`` (global random state left alone; an empty folder is an error), DESIGN.md
    section 1."""
    rng = random.Random(trial)
    files = []
    for img_dir in _id_folders(root, folders, ids):
        candidates = sorted_files(img_dir)
        if not candidates:
            raise RawDataError(f"empty image folder {img_dir} (a gallery camera folder needs images)")
        files.append(rng.choice(candidates))
    return files


def read_path_labels(root: str, path: str, missing_hint: str) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels int64)`` of a ``<relative path> <label>`` list file, in file order; blank lines
    skipped, every listed image must exist under ``root``, ``missing_hint`` completes the error for a missing file."""
    if not os.path.isfile(path):
        raise RawDataError(f"missing {path} ({missing_hint})")
    paths, labels = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            relative, label = fields
            labels.append(int(label))
        except ValueError:
            raise RawDataError(f"{path} line {number}: expected '<relative path> <label>', "
                               f"got {line.strip()!r}") from None
        if not os.path.isfile(os.path.join(root, relative)):
            raise RawDataError(f"image {os.path.join(root, relative)} listed in {path} line {number} does not exist")
        paths.append(relative)
    if not paths:
        raise RawDataError(f"{path} lists no images")
    return paths, np.array(labels, dtype=np.int64)
