"""SYSU-MM01 splits against a literal transcription of the official split functions."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest

from rpnr.common.errors import RawDataError
from rpnr.data.registry import get_dataset
from rpnr.data.sysu import (
    SYSU_MODES,
    SYSU_TRIALS,
    check_layout,
    gallery_split,
    plan_sysu,
    query_split,
    read_ids,
    train_split,
)


def _official_ids(data_path: str) -> list[str]:
    with open(os.path.join(data_path, "exp/test_id.txt")) as file:
        ids = file.read().splitlines()
        ids = [int(y) for y in ids[0].split(",")]
        return ["%04d" % x for x in ids]  # noqa: UP031 - official code, verbatim


def official_query(data_path: str, mode: str = "all"):
    """The release's process_query_sysu (pid/cam from character positions of the path)."""
    ir_cameras = ["cam3", "cam6"] if mode in ("all", "indoor") else []
    files_ir = []
    for id in sorted(_official_ids(data_path)):
        for cam in ir_cameras:
            img_dir = os.path.join(data_path, cam, id)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                files_ir.extend(new_files)
    cams = [int(p[-15]) for p in files_ir]
    pids = [int(p[-13:-9]) for p in files_ir]
    return files_ir, np.array(pids), np.array(cams)


def official_gallery(data_path: str, mode: str = "all", trial: int = 0):
    """The release's process_gallery_sysu (global random.seed + random.choice)."""
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    files_rgb = []
    for id in sorted(_official_ids(data_path)):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, id)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                files_rgb.append(random.choice(new_files))
    cams = [int(p[-15]) for p in files_rgb]
    pids = [int(p[-13:-9]) for p in files_rgb]
    return files_rgb, np.array(pids), np.array(cams)


@pytest.mark.parametrize("trailing_slash", [False, True])
def test_query_and_galleries_equal_official(synthetic_sysu_raw, trailing_slash):
    root = str(synthetic_sysu_raw) + ("/" if trailing_slash else "")
    for mode in ("all", "indoor"):
        paths, pids, cams = query_split(root, mode)
        ref = official_query(root, mode)
        assert paths == ref[0] and len(paths) > 10
        np.testing.assert_array_equal(pids, ref[1])
        np.testing.assert_array_equal(cams, ref[2])
        galleries = set()
        for trial in range(10):
            paths, pids, cams = gallery_split(root, mode, trial)
            ref = official_gallery(root, mode, trial)
            assert paths == ref[0]
            np.testing.assert_array_equal(pids, ref[1])
            np.testing.assert_array_equal(cams, ref[2])
            galleries.add(tuple(paths))
        assert len(galleries) > 1  # trials draw different galleries
    assert set(np.unique(gallery_split(root, "indoor", 0).cams)) == {1, 2}
    assert set(np.unique(gallery_split(root, "all", 0).cams)) == {1, 2, 4, 5}


def test_gallery_leaves_global_random_state_alone(synthetic_sysu_raw):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    gallery_split(str(synthetic_sysu_raw), "all", 4)
    assert random.random() == expected


def test_ids_first_line_only_and_sorted_as_strings(synthetic_sysu_raw, tmp_path):
    root = tmp_path / "sysu"
    shutil.copytree(synthetic_sysu_raw, root)
    ids = [int(i) for i in read_ids(str(root), "test")]
    shuffled = ids[::-1]
    (root / "exp" / "test_id.txt").write_text(",".join(map(str, shuffled)) + "\n999,998\n")
    assert read_ids(str(root), "test") == [f"{i:04d}" for i in shuffled]
    paths, pids, _ = query_split(str(root))
    assert paths == official_query(str(root))[0]
    assert list(pids) == sorted(pids)  # ids visited in sorted order
    assert not ({998, 999} & set(pids.tolist()))


def test_train_split_order_and_content(synthetic_sysu_raw):
    root = str(synthetic_sysu_raw)
    rgb, ir = train_split(root)
    ids = sorted(read_ids(root, "train") + read_ids(root, "val"))
    expected = {"rgb": [], "ir": []}
    for pid in ids:
        for key, cams in (("rgb", (1, 2, 4, 5)), ("ir", (3, 6))):
            for cam in cams:
                folder = os.path.join(root, f"cam{cam}", pid)
                if os.path.isdir(folder):
                    expected[key] += [folder + "/" + n for n in sorted(os.listdir(folder))]
    assert rgb.paths == expected["rgb"] and ir.paths == expected["ir"]
    assert set(np.unique(rgb.cams)) == {1, 2, 4, 5} and set(np.unique(ir.cams)) == {3, 6}
    assert set(rgb.pids.tolist()) == {int(i) for i in ids}  # every train/val id has RGB images
    assert not set(rgb.pids.tolist()) & {int(i) for i in read_ids(root, "test")}


def test_empty_gallery_folder_is_a_clear_error(synthetic_sysu_raw, tmp_path):
    root = tmp_path / "sysu"
    shutil.copytree(synthetic_sysu_raw, root)
    pid = read_ids(str(root), "test")[0]
    folder = root / "cam1" / pid
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with pytest.raises(RawDataError, match="empty image folder"):
        gallery_split(str(root), "all", 0)


def test_id_without_images_is_reported(synthetic_sysu_raw, tmp_path):
    root = tmp_path / "sysu"
    shutil.copytree(synthetic_sysu_raw, root)
    line = (root / "exp" / "val_id.txt").read_text().strip()
    (root / "exp" / "val_id.txt").write_text(line + ",777\n")
    with pytest.raises(RawDataError, match="id 777 of exp/val_id.txt has no images"):
        check_layout(str(root))
    check_layout(str(synthetic_sysu_raw))  # the untouched tree is fine


def test_registry_settings_read_the_official_splits_from_the_plan(synthetic_sysu_raw):
    """Each SYSU-MM01 setting of the registry reads, per trial, the gallery rows the plan stores for that mode and
    trial (the official gallery draw), and the whole query set (one query for both modes, as the release)."""
    root = str(synthetic_sysu_raw)
    ds = get_dataset("sysu")
    assert [s.name for s in ds.settings] == list(SYSU_MODES) == ["all", "indoor"]
    assert ds.trials == SYSU_TRIALS == tuple(range(10)) and ds.epoch_trial(5) == 0
    plan = plan_sysu(root)
    sets = {spec.name: spec for spec in plan.sets}
    assert query_split(root, "indoor").paths == query_split(root, "all").paths
    assert sets["query"].paths == [os.path.relpath(p, root) for p in query_split(root, "all").paths]
    for setting in ds.settings:
        assert (setting.query.set, setting.query.modal, setting.query.arrays(3)) == ("query", "infrared", (None, None))
        assert (setting.gallery.set, setting.gallery.modal) == ("gallery", "visible")
        for trial in (0, 9):
            index, labels = setting.gallery.arrays(trial)
            assert index == f"gallery_index_{setting.name}_{trial}" and labels is None
            rows = plan.arrays[index]
            ref = gallery_split(root, setting.name, trial)
            assert [sets["gallery"].paths[r] for r in rows] == [os.path.relpath(p, root) for p in ref.paths]
            np.testing.assert_array_equal(sets["gallery"].pids[rows], ref.pids)
            np.testing.assert_array_equal(sets["gallery"].cams[rows], ref.cams)
    with pytest.raises(ValueError, match="mode must be 'all' or 'indoor'"):
        gallery_split(root, "outdoor", 0)
