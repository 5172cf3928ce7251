"""A prepared folder that is not what prepare wrote ends in one line that says what to do (DESIGN.md section 10):
an array replaced by another of the same shape (the manifest's checksums), a damaged manifest.json, and a
folder of the previous manifest format (read, with one note)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main

from rpnr.common.errors import DamagedManifestError, PreparedDataError
from rpnr.data import prepared
from rpnr.data.prepare import prepare_main
from rpnr.data.prepared import check_prepared, load_side
from rpnr.data.registry import get_dataset
from rpnr.engine.loop import load_train


def _copy(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    return copy


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _swap(folder: Path, a: str, b: str) -> None:
    """Exchange the files ``a`` and ``b`` of ``folder``."""
    os.replace(folder / a, folder / "swap.tmp")
    os.replace(folder / b, folder / a)
    os.replace(folder / "swap.tmp", folder / b)


def _again(dataset: str, root: Path) -> str:
    return f"prepare the data again (prepare_{dataset}.py --data-dir <raw dataset> --output-dir {root} --overwrite)"


def test_manifest_records_the_checksum_of_every_array_but_the_images(prepared_sysu):
    manifest = _manifest(prepared_sysu)
    assert manifest["format_version"] == prepared.FORMAT_VERSION == 2
    on_disk = {p.name for p in Path(prepared_sysu).glob("*.npy")}
    small = {n for n in on_disk if not n.endswith("_images.npy")}
    assert len(small) == 4 * 3 + 20 and set(manifest["checksums"]) == small  # pids, cams, paths; gallery indices
    for name in sorted(small):
        assert manifest["checksums"][name] == hashlib.sha256((prepared_sysu / name).read_bytes()).hexdigest(), name


@pytest.mark.parametrize("first, second", [
    ("trial1_test_visible_index.npy", "trial2_test_visible_index.npy"),  # another trial's test images
    ("visible_train_cams.npy", "thermal_train_cams.npy"),  # the other modality's cameras
])
def test_same_shape_arrays_swapped_are_refused_naming_the_file(prepared_regdb, tmp_path, first, second):
    copy = _copy(prepared_regdb, tmp_path)
    a, b = np.load(copy / first), np.load(copy / second)
    assert a.shape == b.shape and a.dtype == b.dtype and not np.array_equal(a, b)  # only a checksum tells them apart
    _swap(copy, first, second)
    with pytest.raises(PreparedDataError) as caught:
        check_prepared(copy, "regdb")
    assert str(caught.value) == (f"{copy / first} does not match the checksum manifest.json recorded when it was "
                                 f"prepared (replaced or damaged?); {_again('regdb', copy)}")
    _swap(copy, first, second)  # back: accepted again
    assert check_prepared(copy, "regdb", 64, 32)["format_version"] == 2


def test_label_array_with_the_same_labels_in_another_order_is_refused(prepared_regdb, tmp_path):
    copy = _copy(prepared_regdb, tmp_path)
    name = "trial3_test_thermal_labels.npy"
    labels = np.load(copy / name)
    np.save(copy / name, labels[::-1])  # the same shape, dtype and identities, other rows
    assert not np.array_equal(np.load(copy / name), labels)
    with pytest.raises(PreparedDataError, match=f"{name} does not match the checksum manifest.json recorded"):
        check_prepared(copy, "regdb")


def test_index_array_replaced_by_another_trials_is_refused_by_test_py(prepared_sysu, tmp_path, capsys):
    copy = _copy(prepared_sysu, tmp_path)
    victim = "gallery_index_all_3.npy"
    other = np.load(copy / "gallery_index_all_4.npy")
    assert other.shape == np.load(copy / victim).shape and not np.array_equal(other, np.load(copy / victim))
    np.save(copy / victim, other)
    status, out, err = run_main(capsys, "--dataset", "sysu", "--data-dir", copy, "--checkpoint",
                                tmp_path / "unused.pth")
    assert status == 1 and out == ""
    assert err.strip().splitlines() == [
        f"test.py: error: {copy / victim} does not match the checksum manifest.json recorded when it was prepared "
        f"(replaced or damaged?); {_again('sysu', copy)}"]


def test_a_changed_path_array_is_refused(prepared_sysu, tmp_path):
    copy = _copy(prepared_sysu, tmp_path)
    paths = np.load(copy / "query_paths.npy")
    np.save(copy / "query_paths.npy", paths[::-1])  # same length and dtype, other order
    with pytest.raises(PreparedDataError, match=r"query_paths.npy does not match the checksum"):
        check_prepared(copy, "sysu")


def _previous_format(folder: Path) -> None:
    """Rewrite ``folder``'s manifest as format 1 wrote it: no checksums."""
    manifest = _manifest(folder)
    del manifest["checksums"]
    manifest["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def test_previous_format_is_read_with_one_note(prepared_regdb, tmp_path, capsys):
    copy = _copy(prepared_regdb, tmp_path)
    _previous_format(copy)
    capsys.readouterr()
    assert check_prepared(copy, "regdb", 64, 32)["format_version"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {copy} was prepared before checksums were recorded (manifest.json format 1): its label "
                   f"and index arrays are not verified; to have them verified, {_again('regdb', copy)}"]
    visible, thermal = load_train(copy, "regdb", 2)  # every loader reads it; the note is not repeated
    assert len(visible) == len(thermal) > 0
    assert capsys.readouterr().err == ""
    # what the note warns about: a swapped label array is not seen in a folder of the previous format
    _swap(copy, "trial1_test_visible_index.npy", "trial2_test_visible_index.npy")
    check_prepared(copy, "regdb")
    side = get_dataset("regdb").setting("visible_to_thermal").query
    wrong = load_side(copy, side, 1).paths
    np.testing.assert_array_equal(wrong, load_side(prepared_regdb, side, 2).paths)
    assert not np.array_equal(wrong, load_side(prepared_regdb, side, 1).paths)


def test_previous_format_folder_is_replaced_by_overwrite(prepared_regdb, synthetic_regdb_raw, tmp_path, capsys):
    copy = _copy(prepared_regdb, tmp_path)
    _previous_format(copy)
    assert prepare_main("regdb", ["--data-dir", str(synthetic_regdb_raw), "--output-dir", str(copy), "--height",
                                  "32", "--width", "16", "--overwrite"]) == 0
    assert _manifest(copy)["format_version"] == 2 and check_prepared(copy, "regdb", 32, 16)


def _damage(kind: str, path: Path) -> str:
    """Damage the manifest ``path`` as ``kind`` says; the reason the refusal gives."""
    text = path.read_text()
    manifest = json.loads(text)
    if kind == "truncated":
        path.write_text(text[:len(text) // 2])
        return "truncated: the JSON text ends early"
    if kind == "empty":
        path.write_text("")
        return "empty"
    if kind == "invalid JSON":
        path.write_text(text.replace('"height":', '"height"', 1))
        return "not valid JSON: Expecting ':' delimiter"
    if kind == "not UTF-8":
        path.write_bytes(b"\xff\xfe" + text.encode())
        return "not UTF-8 text"
    if kind == "a list":
        path.write_text(json.dumps([manifest]))
        return "a JSON list, not an object"
    if kind == "no format_version":
        del manifest["format_version"]
        path.write_text(json.dumps(manifest))
        return "no format_version"
    if kind == "unknown format_version":
        manifest["format_version"] = 99
        path.write_text(json.dumps(manifest))
        return "format_version 99, which this code does not read (it reads (1, 2))"
    if kind == "no sets":
        del manifest["sets"]
        path.write_text(json.dumps(manifest))
        return "no sets"
    if kind == "a count missing":
        del manifest["sets"]["query"]["count"]
        path.write_text(json.dumps(manifest))
        return "set 'query' has no valid count"
    if kind == "no arrays":
        manifest["arrays"] = "gallery_index_all_0"
        path.write_text(json.dumps(manifest))
        return "no valid list of arrays"
    if kind == "no height":
        del manifest["height"]
        path.write_text(json.dumps(manifest))
        return "no valid height"
    if kind == "a checksum missing":
        del manifest["checksums"]["train_ir_pids.npy"]
        path.write_text(json.dumps(manifest))
        return "no valid checksum of train_ir_pids.npy"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "empty", "invalid JSON", "not UTF-8", "a list", "no format_version",
                                  "unknown format_version", "no sets", "a count missing", "no arrays", "no height",
                                  "a checksum missing"])
def test_damaged_manifest_says_prepare_again(kind, prepared_sysu, tmp_path):
    copy = _copy(prepared_sysu, tmp_path)
    reason = _damage(kind, copy / "manifest.json")
    with pytest.raises(DamagedManifestError) as caught:
        check_prepared(copy, "sysu")
    line = str(caught.value)
    assert line.startswith(f"{copy / 'manifest.json'} is damaged ({reason}") and "\n" not in line, line
    assert line.endswith(f"): {_again('sysu', copy)}"), line


def test_damaged_manifest_in_test_py_and_prepare_again_as_told(prepared_regdb, synthetic_regdb_raw, tmp_path, capsys):
    copy = _copy(prepared_regdb, tmp_path)
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text[:200])
    status, out, err = run_main(capsys, "--dataset", "regdb", "--data-dir", copy, "--checkpoint",
                                tmp_path / "unused_{trial}.pth")
    assert status == 1 and out == ""
    assert err.strip().splitlines() == [f"test.py: error: {copy / 'manifest.json'} is damaged (truncated: the JSON "
                                        f"text ends early): {_again('regdb', copy)}"]
    # without --overwrite: refused as a prepared folder (not as someone else's), nothing touched
    argv = ["--data-dir", str(synthetic_regdb_raw), "--output-dir", str(copy), "--height", "32", "--width", "16"]
    assert prepare_main("regdb", argv) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (copy / "manifest.json").read_text() == text[:200]
    assert prepare_main("regdb", [*argv, "--overwrite"]) == 0  # the advice works
    assert check_prepared(copy, "regdb", 32, 16)["format_version"] == 2


def test_damaged_manifest_among_other_files_is_not_overwritten(synthetic_regdb_raw, tmp_path, capsys):
    other = tmp_path / "results"
    other.mkdir()
    (other / "manifest.json").write_text("{ unfinished")
    (other / "paper.tex").write_text("months of work")
    status = prepare_main("regdb", ["--data-dir", str(synthetic_regdb_raw), "--output-dir", str(other), "--height",
                                    "32", "--width", "16", "--overwrite"])
    assert status == 1 and "was not prepared by this project" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["manifest.json", "paper.tex"]
    assert (other / "paper.tex").read_text() == "months of work"
