"""LLCM (DESIGN.md section 9; Zhang and Wang, CVPR 2023): raw layout, splits, test settings, figures."""

import os
import re

import numpy as np

from rpnr.common.errors import RawDataError
from rpnr.data.prepared import PreparePlan, SetSpec, Setting, Side
from rpnr.data.published import PublishedStats
from rpnr.data.raw import Split, cam_split, folder_images, read_id_line, read_path_labels, sample_folder_images
from rpnr.metrics import eval_llcm, llcm_ignored

TRAIN_LISTS = {"visible": "idx/train_vis.txt", "infrared": "idx/train_nir.txt"}
TEST_ID_FILE = "idx/test_id.txt"
TEST_ROOTS = {"visible": "test_vis", "infrared": "test_nir"}
LLCM_VIS_CAMS = tuple(range(1, 10))
LLCM_NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)  # LLCM's test_nir/cam3 is empty
# camera folders in the release's order (DEEN/data_manager.py process_query_llcm / process_gallery_llcm)
TEST_FOLDERS = {"visible": tuple(f"test_vis/cam{k}" for k in LLCM_VIS_CAMS),
                "infrared": tuple(f"test_nir/cam{k}" for k in LLCM_NIR_CAMS)}
LAYOUT = ("expected the LLCM layout with idx/train_vis.txt, idx/train_nir.txt, idx/test_id.txt, "
          "test_vis/cam<k>/<id>/ and test_nir/cam<k>/<id>/")
_CAMERA = re.compile(r"_c(\d+)_")
LLCM_MODALITIES = ("visible", "infrared")
LLCM_TRIALS = tuple(range(10))


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise RawDataError(f"LLCM folder not found: {root}")


def _check_modality(modality: str) -> None:
    if modality not in LLCM_MODALITIES:
        raise ValueError(f"modality must be 'visible' or 'infrared', got {modality!r}")


def camera_of(file_name: str) -> int:
    """The camera number of an LLCM training file name (the digits of ``_c<k>_``); -1 when it has none."""
    found = _CAMERA.search(file_name)
    return int(found.group(1)) if found else -1


def read_test_ids(root: str) -> list[str]:
    """Test ids of ``idx/test_id.txt`` as 4-digit strings, in file order (first line only, as the release)."""
    _check_root(root)
    return read_id_line(os.path.join(root, TEST_ID_FILE), LAYOUT)


def train_split(root: str, modality: str) -> Split:
    """Training images of ``modality`` ("visible"|"infrared") in the order of its ``idx`` list (relative paths)."""
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
    """``split`` sorted by relative path: the release clusters ``sorted(dataset.train)`` (DESIGN.md section 1)."""
    order = sorted(range(len(split.paths)), key=split.paths.__getitem__)
    return Split([split.paths[i] for i in order], split.pids[order], split.cams[order])


def query_split(root: str, modality: str) -> Split:
    """Every test image of ``modality`` in the release's query order, with paths relative to ``root``."""
    _check_modality(modality)
    return cam_split(folder_images(root, TEST_FOLDERS[modality], read_test_ids(root)), root)


def gallery_split(root: str, modality: str, trial: int = 0) -> Split:
    """The release's gallery of ``trial`` in ``modality``, with paths relative to ``root``."""
    _check_modality(modality)
    return cam_split(sample_folder_images(root, TEST_FOLDERS[modality], read_test_ids(root), trial), root)


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
    """What ``prepare_llcm.py`` writes: training sets (bicubic), test sets and gallery rows (Lanczos)."""
    root = os.fspath(root)
    check_layout(root)
    train = {m: cluster_order(train_split(root, m)) for m in LLCM_MODALITIES}
    test = {m: query_split(root, m) for m in LLCM_MODALITIES}
    galleries = {(m, t): gallery_split(root, m, t) for m in LLCM_MODALITIES for t in LLCM_TRIALS}
    rows = {m: {p: i for i, p in enumerate(test[m].paths)} for m in LLCM_MODALITIES}  # galleries hold queries
    arrays = {f"gallery_index_{m}_{t}": np.array([rows[m][p] for p in gallery.paths], dtype=np.int64)
              for (m, t), gallery in galleries.items()}
    sets = [SetSpec("train_rgb", *train["visible"], "bicubic"), SetSpec("train_ir", *train["infrared"], "bicubic"),
            *[SetSpec(f"test_{m}", *test[m], "lanczos") for m in LLCM_MODALITIES]]
    views = [("train", m, train[m].pids, train[m].cams) for m in LLCM_MODALITIES]
    views += [("test (every image)", m, test[m].pids, test[m].cams) for m in LLCM_MODALITIES]
    views += [("gallery (trial 0)", m, galleries[m, 0].pids, galleries[m, 0].cams) for m in LLCM_MODALITIES]
    return PreparePlan("llcm", root, sets, arrays, views, {"gallery_trials": list(LLCM_TRIALS)}, _figures(train, test))


def _figures(train: dict[str, Split], test: dict[str, Split]) -> dict[str, list[int]]:
    figures = {}
    for split, splits in (("train", train), ("test", test)):
        figures[f"{split} identities"] = [len(np.unique(np.concatenate([s.pids for s in splits.values()])))]
        figures.update({f"{split} {m} images": [len(s.paths)] for m, s in splits.items()})
    return figures


def _direction(query: str, gallery: str, sampled_queries: bool = False) -> Setting:
    """Every ``query`` test image against the sampled ``gallery`` of trial {trial}; ``sampled_queries``: reversed."""
    sampled = Side(f"test_{gallery}", gallery, index=f"gallery_index_{gallery}_{{trial}}")
    every = Side(f"test_{query}", query)
    label = f"{query.title()} to {gallery.title()}" + (" (sampled infrared queries)" if sampled_queries else "")
    about = ("compute visible to infrared as the LLCM release's test.py does (test_mode [2, 1]): the sampled "
             "infrared gallery images of each trial are the queries and every visible test image is the gallery, "
             "instead of every visible image as a query against the sampled infrared gallery (default, as DMDL and "
             "CEIL). For comparisons with supervised papers that used the release's script")
    return Setting(f"{query}_to_{gallery}", f"LLCM {query} to {gallery}", label,
                   sampled if sampled_queries else every, every if sampled_queries else sampled, eval_llcm,
                   llcm_ignored, about if sampled_queries else "")


PUBLISHED = PublishedStats("LLCM", "Zhang and Wang CVPR 2023", {
    "train identities": 713, "train visible images": 16946, "train infrared images": 13975,
    "test identities": 351, "test visible images": 8680, "test infrared images": 7166})
SETTINGS = (_direction("visible", "infrared"), _direction("infrared", "visible"))
VARIANTS = {"v2i_sampled_infrared_queries": _direction("visible", "infrared", sampled_queries=True)}
