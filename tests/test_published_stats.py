"""Prepared data compared with the datasets' published statistics (warnings, manifest record)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import rpnr.data.registry
from rpnr.data import llcm as llcm_data
from rpnr.data import published
from rpnr.data import regdb as regdb_data
from rpnr.data import sysu as sysu_data
from rpnr.data.prepare import prepare_main
from rpnr.data.published import PublishedStats, compare_published, format_published
from rpnr.data.regdb import plan_regdb
from rpnr.data.registry import get_dataset
from rpnr.data.sysu import plan_sysu

SYSU_EXPECTED = {"train identities": 395, "train visible images": 22258, "train infrared images": 11909,
                 "test identities": 96, "query infrared images": 3803, "all-search gallery images per trial": 301,
                 "indoor-search gallery images per trial": 112}


def _raw_sysu_counts(root: Path) -> dict[str, int]:
    """The published SYSU figures counted straight from a raw tree (folders and id files)."""
    def ids(split):
        return [int(x) for x in (root / "exp" / f"{split}_id.txt").read_text().splitlines()[0].split(",")]

    def files(cams, pid):
        folders = [root / f"cam{c}" / f"{pid:04d}" for c in cams]
        return [f for d in folders if d.is_dir() for f in os.listdir(d)]

    train, test = ids("train") + ids("val"), ids("test")
    return {
        "train identities": len(train),
        "train visible images": sum(len(files((1, 2, 4, 5), p)) for p in train),
        "train infrared images": sum(len(files((3, 6), p)) for p in train),
        "test identities": len(test),
        "query infrared images": sum(len(files((3, 6), p)) for p in test),
        "all-search gallery images per trial": sum((root / f"cam{c}" / f"{p:04d}").is_dir()
                                                   for p in test for c in (1, 2, 4, 5)),
        "indoor-search gallery images per trial": sum((root / f"cam{c}" / f"{p:04d}").is_dir()
                                                      for p in test for c in (1, 2)),
    }


def test_published_tables_hold_the_papers_figures():
    # each dataset module's table is its registry entry's
    for name, module in (("sysu", sysu_data), ("regdb", regdb_data), ("llcm", llcm_data)):
        assert get_dataset(name).published is module.PUBLISHED
    assert dict(get_dataset("sysu").published.figures) == SYSU_EXPECTED
    regdb = get_dataset("regdb").published.figures
    # 412 persons x 10 images per modality; each trial: half the persons, all their images
    assert regdb["identities"] == 412 and regdb["visible images per identity"] == 10
    assert regdb["train identities per trial"] + regdb["test identities per trial"] == regdb["identities"]
    for split in ("train", "test"):
        for modality in ("visible", "thermal"):
            assert regdb[f"{split} {modality} images per trial"] == (
                regdb[f"{split} identities per trial"] * regdb[f"{modality} images per identity"])
    llcm = get_dataset("llcm").published.figures  # the paper's totals: 1,064 identities, 46,767 bounding boxes
    assert llcm["train identities"] + llcm["test identities"] == 1064
    assert sum(v for k, v in llcm.items() if k.endswith("images")) == 46767


def test_all_figures_matching_give_one_line():
    check = compare_published(get_dataset("sysu").published, {k: [v] for k, v in SYSU_EXPECTED.items()})
    assert check["matches"] and check["differences"] == []
    assert check["found"]["train infrared images"] == [11909, 11909]
    lines = format_published(check)
    assert lines == ["all 7 figures match the published SYSU-MM01 statistics (Wu et al. ICCV 2017; "
                     "RPNR release log)"]


def test_each_difference_is_one_warning_line():
    found = {name: [value] for name, value in get_dataset("regdb").published.figures.items()}
    found["visible images per identity"] = [10] * 400 + [9, 8]  # two persons miss images
    found["test identities per trial"] = [206] * 9 + [205]
    del found["identities"]
    check = compare_published(get_dataset("regdb").published, found)
    assert not check["matches"]
    assert check["found"]["visible images per identity"] == [8, 10]
    assert check["differences"] == ["identities: not counted here, published 412",
                                    "visible images per identity: found 8 to 10, published 10",
                                    "test identities per trial: found 205 to 206, published 206"]
    lines = format_published(check)
    assert len(lines) == 3 and all(line.startswith("warning: RegDB ") for line in lines)
    assert "found 205 to 206, published 206" in lines[2]
    assert format_published(compare_published(PublishedStats("market"), {"images": [5]})) == [
        "no published statistics for market to compare with"]


def test_sysu_plan_counts_the_published_figures(synthetic_sysu_raw):
    figures = plan_sysu(str(synthetic_sysu_raw)).figures
    assert set(figures) == set(SYSU_EXPECTED)
    raw = _raw_sysu_counts(Path(synthetic_sysu_raw))
    assert raw["train identities"] == 12 and raw["test identities"] == 6
    for name, count in raw.items():
        per_trial = name.endswith("per trial")
        assert figures[name] == ([count] * 10 if per_trial else [count]), name


def test_regdb_plan_counts_the_published_figures(synthetic_regdb_raw):
    figures = plan_regdb(str(synthetic_regdb_raw)).figures
    assert set(figures) == set(get_dataset("regdb").published.figures)
    assert figures["identities"] == [12]  # the fixture: 12 persons, 4 images per modality, 6 + 6 per trial
    assert figures["visible images per identity"] == [4] * 12 and figures["thermal images per identity"] == [4] * 12
    assert figures["train identities per trial"] == [6] * 10 and figures["test identities per trial"] == [6] * 10
    assert figures["test thermal images per trial"] == [24] * 10


def test_prepare_prints_warnings_and_records_the_check(synthetic_sysu_raw, tmp_path, capsys):
    out = tmp_path / "sysu"
    status = prepare_main("sysu", ["--data-dir", str(synthetic_sysu_raw), "--output-dir", str(out), "--height", "16",
                                   "--width", "8", "--workers", "2"])
    assert status == 0
    stdout = capsys.readouterr().out
    warnings = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 7  # a subset: every figure differs, each on one line
    raw = _raw_sysu_counts(Path(synthetic_sysu_raw))
    assert (f"warning: SYSU-MM01 train identities: found {raw['train identities']}, published 395 "
            f"(a subset is fine for a quick experiment)") in warnings
    assert f"train infrared images: found {raw['train infrared images']}, published 11,909" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    check = manifest["published_check"]
    assert check["expected"] == SYSU_EXPECTED and len(check["differences"]) == 7 and check["matches"] is False
    assert check["found"]["train infrared images"] == [raw["train infrared images"]] * 2


def test_prepare_says_all_match(synthetic_regdb_raw, tmp_path, capsys, monkeypatch):
    # the synthetic tree's own figures as the "published" ones: one line, no warning
    table = published.PublishedStats("RegDB", "test table", {
        "identities": 12, "visible images per identity": 4, "train identities per trial": 6,
        "test thermal images per trial": 24})
    regdb = dataclasses.replace(get_dataset("regdb"), published=table)
    monkeypatch.setitem(rpnr.data.registry._REGISTRY, "regdb", regdb)
    out = tmp_path / "regdb"
    status = prepare_main("regdb", ["--data-dir", str(synthetic_regdb_raw), "--output-dir", str(out), "--height",
                                    "16", "--width", "8", "--workers", "2"])
    assert status == 0
    stdout = capsys.readouterr().out
    assert "warning" not in stdout
    assert "all 4 figures match the published RegDB statistics (test table)" in stdout.splitlines()
    assert json.loads((out / "manifest.json").read_text())["published_check"]["matches"] is True
