"""LLCM raw layout: the training lists, the test identities and the official query/gallery splits.

Raw layout (as distributed by its authors, Zhang and Wang, CVPR 2023):

- ``idx/train_vis.txt``, ``idx/train_nir.txt``: one ``<relative path> <label>`` line per training
  image, e.g. ``vis/0001/0001_c01_s185535_f7010_vis.jpg 0``; identity = the label, camera = the
  number after ``_c`` in the file name;
- ``idx/test_id.txt``: one line of comma-separated test identity numbers;
- ``test_vis/cam<k>/<pid as 4 digits>/`` (k = 1..9) and ``test_nir/cam<k>/<pid>/`` (k = 1, 2,
  4..9; the release never lists ``test_nir/cam3``, which is empty): the test images, camera = k,
  identity = the folder name. Camera k is the same physical camera in both modalities.

Only paths relative to the root are parsed, so the root itself may be named anything.
"""

from __future__ import annotations

import os
import re

import numpy as np

from rpnr.data.prepared import LLCM_MODALITIES, LLCM_TRIALS, PreparePlan, SetSpec
from rpnr.data.raw_images import RawDataError
from rpnr.data.raw_layout import Split, folder_images, read_id_line, read_path_labels, sample_folder_images

TRAIN_LISTS = {"visible": "idx/train_vis.txt", "infrared": "idx/train_nir.txt"}
TEST_ID_FILE = "idx/test_id.txt"
TEST_ROOTS = {"visible": "test_vis", "infrared": "test_nir"}
# camera folders in the release's order (DEEN/data_manager.py process_query_llcm / process_gallery_llcm)
TEST_FOLDERS = {
    "visible": tuple(f"test_vis/cam{k}" for k in range(1, 10)),
    "infrared": tuple(f"test_nir/cam{k}" for k in (1, 2, 4, 5, 6, 7, 8, 9)),
}
LAYOUT = ("expected the LLCM layout with idx/train_vis.txt, idx/train_nir.txt, idx/test_id.txt, "
          "test_vis/cam<k>/<id>/ and test_nir/cam<k>/<id>/")
_CAMERA = re.compile(r"_c(\d+)_")


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise RawDataError(f"LLCM folder not found: {root}")


def _check_modality(modality: str) -> None:
    if modality not in LLCM_MODALITIES:
        raise ValueError(f"modality must be 'visible' or 'infrared', got {modality!r}")


def camera_of(file_name: str) -> int:
    """The camera number of an LLCM training file name (the digits of ``_c<k>_``), e.g. 1 for
    ``0001_c01_s185535_f7010_vis.jpg``; -1 when the name has no ``_c<k>_``."""
    found = _CAMERA.search(file_name)
    return int(found.group(1)) if found else -1


def read_test_ids(root: str) -> list[str]:
    """Test ids of ``idx/test_id.txt`` as 4-digit strings, in file order (first line only, as the release)."""
    _check_root(root)
    return read_id_line(os.path.join(root, TEST_ID_FILE), LAYOUT)


def train_split(root: str, modality: str) -> Split:
    """Training images of ``modality`` ("visible"|"infrared") in the order of its ``idx`` list, with
    relative paths, pid = the label column and camera = the ``_c<k>_`` number of the file name."""
    _check_modality(modality)
    _check_root(root)
    list_path = os.path.join(root, TRAIN_LISTS[modality])
    paths, labels = read_path_labels(root, list_path, LAYOUT)
    cams = np.array([camera_of(os.path.basename(p)) for p in paths], dtype=np.int64)
    if (cams < 0).any():
        bad = paths[int(np.argmax(cams < 0))]
        raise RawDataError(f"{list_path}: file name {os.path.basename(bad)!r} has no camera '_c<k>_'")
    return Split(paths, labels, cams)


def cluster_order(split: Split) -> Split:
    """``split`` sorted by relative path: the order in which the RPNR release clusters training images.

    Its framework extracts clustering features over ``sorted(dataset.train)`` (entries ``(root + path,
    pid, cam)``, train_sysu.py / train_regdb.py), and the LLCM dataset classes it ships compiled
    (``clustercontrast/datasets/__pycache__/llcm_{rgb,ir}.cpython-38.pyc``) fill ``dataset.train``
    from ``idx/train_{vis,nir}.txt``; sorting by path keeps the list's labels and cameras.
    """
    order = sorted(range(len(split.paths)), key=split.paths.__getitem__)
    return Split([split.paths[i] for i in order], split.pids[order], split.cams[order])


def _test_split(root: str, paths: list[str]) -> Split:
    """Relative paths ``test_*/cam<k>/<pid>/<file>`` with pid = the folder, camera = k."""
    relative = [os.path.relpath(p, root) for p in paths]
    parts = [p.split(os.sep) for p in relative]
    pids = np.array([int(q[2]) for q in parts], dtype=np.int64)
    cams = np.array([int(q[1][3:]) for q in parts], dtype=np.int64)
    return Split(relative, pids.reshape(-1), cams.reshape(-1))


def query_split(root: str, modality: str) -> Split:
    """Every test image of ``modality``: ids sorted, then the camera folders in the release's order,
    then files sorted by name (``process_query_llcm``); relative paths."""
    _check_modality(modality)
    return _test_split(root, folder_images(root, TEST_FOLDERS[modality], read_test_ids(root)))


def gallery_split(root: str, modality: str, trial: int = 0) -> Split:
    """The gallery of ``trial`` in ``modality``: for each sorted test id and each camera folder of the
    modality that exists for it, one image drawn by ``random.Random(trial).choice`` over its sorted
    files, in that order (``process_gallery_llcm`` after ``random.seed(trial)``); relative paths."""
    _check_modality(modality)
    return _test_split(root, sample_folder_images(root, TEST_FOLDERS[modality], read_test_ids(root), trial))


def check_layout(root: str) -> None:
    """Raise :class:`RawDataError` for a missing folder or list file, or a test id without images."""
    _check_root(root)
    for name in (*TRAIN_LISTS.values(), TEST_ID_FILE):
        if not os.path.isfile(os.path.join(root, name)):
            raise RawDataError(f"missing {os.path.join(root, name)} ({LAYOUT})")
    for folder in TEST_ROOTS.values():
        if not os.path.isdir(os.path.join(root, folder)):
            raise RawDataError(f"missing folder {os.path.join(root, folder)} ({LAYOUT})")
    for pid in read_test_ids(root):
        dirs = [os.path.join(root, folder, pid) for m in LLCM_MODALITIES for folder in TEST_FOLDERS[m]]
        if not any(os.path.isdir(d) and os.listdir(d) for d in dirs):
            raise RawDataError(f"test id {int(pid)} of {TEST_ID_FILE} has no images in any of "
                               f"test_vis/cam1..cam9/{pid} and test_nir/cam1,2,4..9/{pid}")


def plan_llcm(root: str) -> PreparePlan:
    """What ``prepare_llcm.py`` writes: the training images of both modalities in the release's clustering
    order (:func:`cluster_order`; bicubic), every test image of each modality in query order (Lanczos)
    and the galleries of trials 0-9 as rows of those test sets."""
    root = os.fspath(root)
    check_layout(root)
    train = {m: cluster_order(train_split(root, m)) for m in LLCM_MODALITIES}
    test = {m: query_split(root, m) for m in LLCM_MODALITIES}
    galleries = {(m, t): gallery_split(root, m, t) for m in LLCM_MODALITIES for t in LLCM_TRIALS}
    rows = {m: {p: i for i, p in enumerate(test[m].paths)} for m in LLCM_MODALITIES}  # galleries hold queries
    arrays = {f"gallery_index_{m}_{t}": np.array([rows[m][p] for p in gallery.paths], dtype=np.int64)
              for (m, t), gallery in galleries.items()}
    sets = [
        SetSpec("train_rgb", train["visible"].paths, train["visible"].pids, train["visible"].cams, "bicubic"),
        SetSpec("train_ir", train["infrared"].paths, train["infrared"].pids, train["infrared"].cams, "bicubic"),
        *[SetSpec(f"test_{m}", test[m].paths, test[m].pids, test[m].cams, "lanczos") for m in LLCM_MODALITIES],
    ]
    views = [("train", m, train[m].pids, train[m].cams) for m in LLCM_MODALITIES]
    views += [("test (every image)", m, test[m].pids, test[m].cams) for m in LLCM_MODALITIES]
    views += [("gallery (trial 0)", m, galleries[m, 0].pids, galleries[m, 0].cams) for m in LLCM_MODALITIES]
    info = {"gallery_trials": list(LLCM_TRIALS)}
    return PreparePlan("llcm", root, sets, arrays, views, info, _figures(train, test))


def _figures(train: dict[str, Split], test: dict[str, Split]) -> dict[str, list[int]]:
    """The counts that :data:`rpnr.data.published.PUBLISHED` lists for LLCM."""
    return {
        "train identities": [len(np.unique(np.concatenate([s.pids for s in train.values()])))],
        "train visible images": [len(train["visible"].paths)],
        "train infrared images": [len(train["infrared"].paths)],
        "test identities": [len(np.unique(np.concatenate([s.pids for s in test.values()])))],
        "test visible images": [len(test["visible"].paths)],
        "test infrared images": [len(test["infrared"].paths)],
    }
