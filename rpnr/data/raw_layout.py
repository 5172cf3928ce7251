"""Pieces the raw layouts share: id files, ``<relative path> <label>`` lists, camera folders.

SYSU-MM01 (``cam<k>/<pid>/``) and the LLCM test images (``test_vis/cam<k>/<pid>/``,
``test_nir/cam<k>/<pid>/``) share the official test protocol of the AGW/DEEN code base:
an id file of one comma-separated line, queries = every image of the test ids (ids sorted,
camera folders in a fixed order, files sorted), and a gallery per trial with one image
drawn per (id, camera folder) after ``random.seed(trial)``. RegDB's and LLCM's training
lists share the ``<relative path> <label>`` line format.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from rpnr.data.raw_images import RawDataError


class Split(NamedTuple):
    """Image paths with their identity and camera ids."""

    paths: list[str]
    pids: np.ndarray  # int64 [N]
    cams: np.ndarray  # int64 [N]


def read_id_line(path: str, missing_hint: str) -> list[str]:
    """Ids of an id file as 4-digit strings, in file order.

    As the official code: only the FIRST line is read, split on ',', each value int()-ed and
    written back as ``"%04d"``. ``missing_hint`` completes the error for a missing file.
    """
    if not os.path.isfile(path):
        raise RawDataError(f"missing {path} ({missing_hint})")
    with open(path) as fh:
        lines = fh.read().splitlines()
    if not lines or not lines[0].strip():
        raise RawDataError(f"{path} is empty (expected one line of comma-separated ids)")
    try:
        ids = [int(y) for y in lines[0].split(",")]
    except ValueError:
        raise RawDataError(f"{path}: first line is not a comma-separated list of integer ids") from None
    return [f"{x:04d}" for x in ids]  # the official "%04d" % x


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
    """Every image of ``ids`` (visited in sorted order) in each of ``folders`` (in the given order)
    that has a folder for the id, files sorted: the official query order.

    Paths are ``os.path.join(root, folder, pid) + '/' + name``, as the official code builds them.
    """
    return [file for img_dir in _id_folders(root, folders, ids) for file in sorted_files(img_dir)]


def sample_folder_images(root: str, folders: Sequence[str], ids: Sequence[str], trial: int) -> list[str]:
    """One image per (id, folder) in :func:`folder_images`' order: the official gallery of ``trial``.

    The official ``random.seed(trial)`` followed by ``random.choice`` over the sorted files of
    each folder is reproduced with ``random.Random(trial).choice``, so the global random state
    is left alone. An empty folder is an error (the official ``random.choice`` fails on it).
    """
    rng = random.Random(trial)
    files = []
    for img_dir in _id_folders(root, folders, ids):
        candidates = sorted_files(img_dir)
        if not candidates:
            raise RawDataError(f"empty image folder {img_dir} (a gallery camera folder needs images)")
        files.append(rng.choice(candidates))
    return files


def read_path_labels(root: str, path: str, missing_hint: str) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels int64)`` of a ``<relative path> <label>`` list file, in file order.

    Blank lines are skipped; every listed image must exist under ``root``. ``missing_hint``
    completes the error for a missing list file.
    """
    if not os.path.isfile(path):
        raise RawDataError(f"missing {path} ({missing_hint})")
    paths, labels = [], []
    with open(path) as fh:
        for number, line in enumerate(fh.read().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                labels.append(int(fields[1]))
            except ValueError:
                raise RawDataError(f"{path} line {number}: expected '<relative path> <label>', "
                                   f"got {line.strip()!r}") from None
            if not os.path.isfile(os.path.join(root, fields[0])):
                raise RawDataError(f"image {os.path.join(root, fields[0])} listed in {path} line {number} "
                                   f"does not exist")
            paths.append(fields[0])
    if not paths:
        raise RawDataError(f"{path} lists no images")
    return paths, np.array(labels, dtype=np.int64)
