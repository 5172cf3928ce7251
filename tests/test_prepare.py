"""prepare_sysu.py / prepare_regdb.py end to end, the prepared-data loaders, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rpnr.common.errors import PreparedDataError
from rpnr.data import prepare as prepared
from rpnr.data.prepared import check_prepared, load_side
from rpnr.data.regdb import plan_regdb, read_idx, release_train_order
from rpnr.data.registry import get_dataset
from rpnr.data.sysu import gallery_split, query_split, train_split
from rpnr.engine.loop import load_train
from rpnr.engine.rank_lists import trial_sets

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=120)  # outside the checkout


def pil_resized(path: str, height: int, width: int, resample) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((width, height), resample))


def test_prepare_sysu_cli(synthetic_sysu_raw, tmp_path):
    out = tmp_path / "sysu_32x16"
    res = run_script("prepare_sysu.py", "--data-dir", synthetic_sysu_raw, "--output-dir", out,
                     "--height", 32, "--width", 16, "--workers", 2)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and "gallery all (trial 0)" in res.stdout and "1,2,4,5" in res.stdout
    assert not list(tmp_path.glob("*.tmp-*"))
    manifest = check_prepared(out, "sysu", 32, 16)
    assert manifest["source"] == str(Path(synthetic_sysu_raw).absolute())
    root = str(synthetic_sysu_raw)
    rgb, ir = train_split(root)
    train_rgb, train_ir = load_train(out, "sysu")
    assert isinstance(train_rgb.images, np.memmap) and train_rgb.images.shape == (len(rgb.paths), 32, 16, 3)
    assert train_rgb.paths.tolist() == [os.path.relpath(p, root) for p in rgb.paths]
    np.testing.assert_array_equal(train_ir.pids, ir.pids)
    np.testing.assert_array_equal(train_ir.cams, ir.cams)
    for k in (0, len(rgb.paths) - 1):  # training images: bicubic
        np.testing.assert_array_equal(train_rgb.images[k], pil_resized(rgb.paths[k], 32, 16, Image.BICUBIC))
    query_ref = query_split(root)
    for mode in ("all", "indoor"):
        for trial in (0, 9):
            sets = trial_sets("sysu", out, trial, mode)
            assert sets.setting.name == mode
            query, gallery = sets.query, sets.gallery
            ref = gallery_split(root, mode, trial)
            assert gallery.paths.tolist() == [os.path.relpath(p, root) for p in ref.paths]
            np.testing.assert_array_equal(gallery.pids, ref.pids)
            np.testing.assert_array_equal(gallery.cams, ref.cams)
            np.testing.assert_array_equal(gallery.images[-1], pil_resized(ref.paths[-1], 32, 16, Image.LANCZOS))
    assert isinstance(query.images, np.memmap)  # the whole query set, memory-mapped
    np.testing.assert_array_equal(query.pids, query_ref.pids)
    np.testing.assert_array_equal(query.images[3], pil_resized(query_ref.paths[3], 32, 16, Image.LANCZOS))
    # bicubic and Lanczos really differ, so the check above is meaningful
    assert not np.array_equal(query.images[3], pil_resized(query_ref.paths[3], 32, 16, Image.BICUBIC))

    again = run_script("prepare_sysu.py", "--data-dir", synthetic_sysu_raw, "--output-dir", out,
                       "--height", 32, "--width", 16)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    again = run_script("prepare_sysu.py", "--data-dir", synthetic_sysu_raw, "--output-dir", out,
                       "--height", 24, "--width", 12, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert check_prepared(out, "sysu")["height"] == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sysu_32x16"]


def test_prepare_regdb_and_trials(prepared_regdb, synthetic_regdb_raw):
    root = str(synthetic_regdb_raw)
    manifest = check_prepared(prepared_regdb, "regdb", 64, 32)
    assert manifest["trials"] == list(range(1, 11))
    regdb = get_dataset("regdb")
    thermal_train = regdb.train[1]
    test_setting = regdb.setting("visible_to_thermal")
    for trial in (1, 7):
        visible, thermal = load_train(prepared_regdb, "regdb", trial)
        paths, labels = read_idx(root, "train", "thermal", trial)
        # the release's order: sorted by the copied name '<label>_c1_<file name>'
        names = sorted(f"{label}_c1_{os.path.basename(p)}" for p, label in zip(paths, labels.tolist()))
        assert [f"{pid}_c1_{os.path.basename(p)}" for p, pid in zip(thermal.paths, thermal.pids.tolist())] == names
        assert sorted(thermal.paths.tolist()) == sorted(paths)
        thermal = load_side(prepared_regdb, thermal_train, trial)  # idx-file order
        assert thermal.paths.tolist() == paths
        np.testing.assert_array_equal(thermal.pids, labels)
        assert set(visible.cams.tolist()) == {1} and set(thermal.cams.tolist()) == {2}
        np.testing.assert_array_equal(thermal.images[5],
                                      pil_resized(os.path.join(root, paths[5]), 64, 32, Image.BICUBIC))
        test_vis = load_side(prepared_regdb, test_setting.query, trial)
        test_th = load_side(prepared_regdb, test_setting.gallery, trial)
        paths, labels = read_idx(root, "test", "visible", trial)
        assert test_vis.paths.tolist() == paths
        np.testing.assert_array_equal(test_vis.pids, labels)
        th_paths, th_labels = read_idx(root, "test", "thermal", trial)
        assert test_th.paths.tolist() == th_paths
        np.testing.assert_array_equal(test_th.pids, th_labels)
        np.testing.assert_array_equal(test_vis.images[-1],
                                      pil_resized(os.path.join(root, paths[-1]), 64, 32, Image.LANCZOS))
        assert not set(test_vis.paths.tolist()) & set(visible.paths.tolist())
        assert len(test_th) == len(test_vis) > 0
    assert set(load_train(prepared_regdb, "regdb", 1)[0].paths) != set(load_train(prepared_regdb, "regdb", 2)[0].paths)


def test_release_train_order_sorts_copied_names_as_strings():
    # the release names RegDB copies '<label>_c1_<file>' and sorts them as strings: '10_' < '1_' < '2_'
    paths = np.array(["V/3/b.bmp", "V/2/b.bmp", "V/11/a.bmp", "V/2/a.bmp"])
    order = release_train_order(np.array([2, 1, 10, 1]), paths)
    np.testing.assert_array_equal(order, [2, 3, 1, 0])


def test_check_prepared_errors(prepared_sysu, prepared_regdb, tmp_path):
    with pytest.raises(PreparedDataError, match="holds prepared regdb data, not sysu"):
        check_prepared(prepared_regdb, "sysu")
    with pytest.raises(PreparedDataError, match="prepared at 64x32"):
        check_prepared(prepared_sysu, "sysu", height=288, width=144)
    with pytest.raises(PreparedDataError, match="not found"):
        check_prepared(tmp_path / "nothing", "sysu")
    with pytest.raises(PreparedDataError, match="not a prepared dataset"):
        check_prepared(tmp_path, "sysu")
    broken = tmp_path / "broken"
    shutil.copytree(prepared_sysu, broken)
    (broken / "gallery_index_indoor_3.npy").unlink()
    with pytest.raises(PreparedDataError, match="missing gallery_index_indoor_3.npy"):
        check_prepared(broken, "sysu")
    with pytest.raises(PreparedDataError, match="trial must be in 0..9"):
        trial_sets("sysu", prepared_sysu, 10, "all")


def _corrupt_first(root: Path, pattern: str) -> str:
    victim = sorted(root.glob(pattern))[0]
    victim.write_bytes(b"this is not an image")
    return str(victim)


def _bad_sysu(kind: str, raw: Path, tmp: Path) -> tuple[Path, str]:
    root = tmp / "raw"
    if kind == "missing folder":
        return tmp / "no_such_dir", "SYSU-MM01 folder not found"
    shutil.copytree(raw, root)
    if kind == "missing test_id":
        (root / "exp" / "test_id.txt").unlink()
        return root, "missing " + str(root / "exp" / "test_id.txt")
    if kind == "corrupt image":
        victim = _corrupt_first(root, "cam6/*/*.jpg")
        return root, f"cannot read image {victim}"
    if kind == "id without images":
        (root / "exp" / "train_id.txt").write_text((root / "exp" / "train_id.txt").read_text().strip() + ",4321\n")
        return root, "id 4321 of exp/train_id.txt has no images"
    raise AssertionError(kind)


def _bad_regdb(kind: str, raw: Path, tmp: Path) -> tuple[Path, str]:
    root = tmp / "raw"
    if kind == "missing folder":
        return tmp / "no_such_dir", "RegDB folder not found"
    shutil.copytree(raw, root)
    if kind == "missing idx":
        (root / "idx" / "test_thermal_4.txt").unlink()
        return root, "missing " + str(root / "idx" / "test_thermal_4.txt")
    if kind == "corrupt image":
        victim = _corrupt_first(root, "Thermal/*/*.bmp")
        return root, f"cannot read image {victim}"
    if kind == "listed image missing":
        sorted(root.glob("Visible/*/*.bmp"))[0].unlink()
        return root, "does not exist"
    raise AssertionError(kind)


@pytest.mark.parametrize("dataset,kind", [
    ("sysu", "missing folder"), ("sysu", "missing test_id"), ("sysu", "corrupt image"),
    ("sysu", "id without images"), ("regdb", "missing folder"), ("regdb", "missing idx"),
    ("regdb", "corrupt image"), ("regdb", "listed image missing"),
])
def test_bad_input_is_one_line_and_leaves_nothing(dataset, kind, synthetic_sysu_raw, synthetic_regdb_raw, tmp_path):
    if dataset == "sysu":
        root, message = _bad_sysu(kind, synthetic_sysu_raw, tmp_path)
    else:
        root, message = _bad_regdb(kind, synthetic_regdb_raw, tmp_path)
    out = tmp_path / "out" / "prepared"
    res = run_script(f"prepare_{dataset}.py", "--data-dir", root, "--output-dir", out, "--height", 32, "--width", 16)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert message in lines[0]
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))


def test_interrupted_write_leaves_nothing(synthetic_regdb_raw, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = prepared.write_image_array

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(prepared, "write_image_array", interrupt_on_third)
    out = tmp_path / "regdb"
    with pytest.raises(KeyboardInterrupt):
        prepared.write_prepared(plan_regdb(str(synthetic_regdb_raw)), out, 32, 16, workers=1)
    assert calls["n"] == 3
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_json_with_counts(prepared_sysu):
    manifest = json.loads((Path(prepared_sysu) / "manifest.json").read_text())
    assert manifest["dataset"] == "sysu" and manifest["format_version"] == prepared.FORMAT_VERSION
    counts = {s: v["count"] for s, v in manifest["sets"].items()}
    assert counts["query"] == len(np.load(Path(prepared_sysu) / "query_pids.npy"))
    stats = {(s["split"], s["modality"]): s for s in manifest["stats"]}
    assert stats["train", "IR"]["images"] == counts["train_ir"]
    assert stats["gallery indoor (trial 0)", "RGB"]["cameras"] == [1, 2]


# ----------------------------------------------------------------------------- nothing lost (DESIGN.md section 10)


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with its contents."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _prepare(capsys, *args) -> tuple[int, str]:
    """prepare_regdb.py's main() in this process: (exit status, its one stderr line)."""
    from rpnr.data.prepare import prepare_main

    capsys.readouterr()
    status = prepare_main("regdb", [str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1, err
    return status, err[0] if err else ""


def test_prepare_never_deletes_the_raw_dataset(synthetic_regdb_raw, tmp_path, capsys):
    raw = tmp_path / "data" / "RegDB"
    shutil.copytree(synthetic_regdb_raw, raw)
    before = _tree(tmp_path)
    for out in (raw, raw.parent, tmp_path):  # the raw folder itself, and folders that hold it
        status, err = _prepare(capsys, "--data-dir", raw, "--output-dir", out, "--overwrite", "--height", 32,
                               "--width", 16)
        assert status == 1 and "is the raw dataset folder or holds it" in err, err
    assert _tree(tmp_path) == before


def test_overwrite_replaces_only_a_folder_this_project_prepared(synthetic_regdb_raw, tmp_path, capsys):
    other = tmp_path / "results"
    other.mkdir()
    (other / "paper.tex").write_text("months of work")
    status, err = _prepare(capsys, "--data-dir", synthetic_regdb_raw, "--output-dir", other, "--overwrite",
                           "--height", 32, "--width", 16)
    assert status == 1 and "was not prepared by this project" in err and "left alone" in err
    assert "pass --overwrite" not in err
    assert _tree(other) == {"paper.tex": b"months of work"}


def test_prepare_checks_free_space_first(synthetic_regdb_raw, tmp_path, capsys, monkeypatch):
    usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(prepared.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    status, err = _prepare(capsys, "--data-dir", synthetic_regdb_raw, "--output-dir", tmp_path / "out", "--height",
                           32, "--width", 16)
    assert status == 1 and err.startswith("prepare_regdb.py: error: not enough space for the prepared arrays: they "
                                          "need about ") and f"5.0 kB free on {tmp_path}" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure, status, words", [
    (OSError(28, "No space left on device"), 1, "no space left on the device: free some space (nothing was written)"),
    (KeyboardInterrupt(), 130, "interrupted;"),
])
def test_full_disk_or_ctrl_c_while_writing_leave_nothing(synthetic_regdb_raw, tmp_path, capsys, monkeypatch,
                                                         failure, status, words):
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise failure
        return original(*args, **kwargs)

    original = prepared.write_image_array
    monkeypatch.setattr(prepared, "write_image_array", fail_on_third)
    out = tmp_path / "out"
    got, err = _prepare(capsys, "--data-dir", synthetic_regdb_raw, "--output-dir", out, "--height", 32, "--width", 16)
    assert got == status and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_runs_are_cleaned_up(synthetic_regdb_raw, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    out = tmp_path / "regdb"
    (tmp_path / f"regdb.tmp-{pid}").mkdir()
    (tmp_path / f"regdb.tmp-{pid}" / "visible_train_images.npy").write_bytes(b"half")
    (tmp_path / f"regdb.old-{pid}").mkdir()  # killed between the two renames: the previous output, no OUT
    (tmp_path / f"regdb.old-{pid}" / "manifest.json").write_text(json.dumps({"format_version": 1, "dataset": "regdb"}))
    prepared.write_prepared(plan_regdb(str(synthetic_regdb_raw)), out, 32, 16, overwrite=True, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regdb"]
    assert check_prepared(out, "regdb", 32, 16)["height"] == 32


def test_prepared_arrays_are_checked_against_the_manifest(prepared_regdb, tmp_path):
    copy = tmp_path / "regdb"
    shutil.copytree(prepared_regdb, copy)
    images = np.load(copy / "visible_train_images.npy")
    np.save(copy / "visible_train_images.npy", images[:, ::2, ::2])  # another image size
    with pytest.raises(PreparedDataError, match=r"visible_train_images.npy holds uint8 \[\d+x32x16x3\] but "
                                                r"manifest.json says uint8 \[\d+x64x32x3\]"):
        check_prepared(copy, "regdb")
    np.save(copy / "visible_train_images.npy", images)
    np.save(copy / "thermal_test_pids.npy", np.load(copy / "thermal_test_pids.npy").astype(np.float32))
    with pytest.raises(PreparedDataError, match="thermal_test_pids.npy holds float32"):
        check_prepared(copy, "regdb")
    np.save(copy / "thermal_test_pids.npy", np.load(prepared_regdb / "thermal_test_pids.npy"))
    data = (copy / "thermal_test_images.npy").read_bytes()
    (copy / "thermal_test_images.npy").write_bytes(data[:-100])
    with pytest.raises(PreparedDataError, match="thermal_test_images.npy is truncated"):
        check_prepared(copy, "regdb")
