"""A fourth dataset, registered from this file alone (DESIGN.md section 7): its own raw layout, prepare plan and test
protocol; prepare, train and test run through the normal entry points with no other module edited."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rpnr.data import registry
from rpnr.data.prepare import prepare_main
from rpnr.data.prepared import PreparePlan, SetSpec, Setting, Side
from rpnr.data.published import PublishedStats
from rpnr.data.registry import Dataset
from rpnr.data.synthetic import background, make_identity, new_folder, render
from rpnr.evaluation import eval_regdb

REPO = Path(__file__).resolve().parents[1]
TRIALS = (0, 1)


def write_toy(out, ids: int = 16, per_modality: int = 6, height: int = 64, width: int = 32, seed: int = 0) -> dict:
    """``<modality>/<pid>/<k>.png`` for modalities ``vis`` and ``ir``; ``test_ids.txt`` lists the test ids."""
    out = new_folder(out)
    rng = np.random.default_rng(seed)
    backgrounds = {tag: background(rng) for tag in ("vis", "ir")}
    for pid in range(ids):
        person_rng = np.random.default_rng([seed, pid])
        person = make_identity(person_rng)
        for tag in ("vis", "ir"):
            (out / tag / str(pid)).mkdir(parents=True)
            for k in range(per_modality):
                img = render(person, person_rng, height, width, tag == "ir", backgrounds[tag])
                Image.fromarray(img).save(out / tag / str(pid) / f"{k}.png")
    (out / "test_ids.txt").write_text(" ".join(str(pid) for pid in range(ids // 2, ids)))
    return {"ids": ids}


def plan_toy(root: str) -> PreparePlan:
    """Training: the ids not listed as test ids; test: every test image, galleries of one visible image per
    test id drawn per trial."""
    root = os.fspath(root)
    test_ids = {int(x) for x in Path(root, "test_ids.txt").read_text().split()}

    def images(tag: str, test: bool) -> tuple[list[str], np.ndarray]:
        paths = sorted(str(p.relative_to(root)) for p in Path(root, tag).glob("*/*.png")
                       if (int(p.parent.name) in test_ids) == test)
        return paths, np.array([int(Path(p).parent.name) for p in paths], dtype=np.int64)

    sets, cams = [], {"vis": 1, "ir": 2}
    for name, tag, test in (("train_rgb", "vis", False), ("train_ir", "ir", False), ("test_visible", "vis", True),
                            ("test_infrared", "ir", True)):
        paths, pids = images(tag, test)
        sets.append(SetSpec(name, paths, pids, np.full(len(paths), cams[tag]), "lanczos" if test else "bicubic"))
    gallery_pids = sets[2].pids
    arrays = {f"gallery_{t}": np.array([np.random.default_rng(t).choice(np.flatnonzero(gallery_pids == pid))
                                        for pid in sorted(test_ids)]) for t in TRIALS}
    return PreparePlan("toy", root, sets, arrays)


def _metric(distmat, q_pids, g_pids, q_cams, g_cams):
    return eval_regdb(distmat, q_pids, g_pids)


TOY = Dataset(
    name="toy", display="Toy", layout="raw toy folder (vis/, ir/, test_ids.txt)", plan=plan_toy,
    published=PublishedStats("Toy", "none", {}),
    train=(Side("train_rgb", "visible"), Side("train_ir", "infrared")),
    settings=(Setting("infrared_to_visible", "Toy infrared to visible", "Infrared to Visible",
                      Side("test_infrared", "infrared"), Side("test_visible", "visible", index="gallery_{trial}"),
                      _metric),),
    trials=TRIALS, eps=0.6, iters=1, top_k=5, full_rgb_batch_in_stage2=False, model_per_trial=False,
    epoch_setting="infrared_to_visible")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy", TOY)  # registered for this test only
    return TOY


def test_a_fourth_dataset_runs_through_the_normal_entry_points(toy, tmp_path, train_script, capsys, one_thread):
    raw, prepared, logs = tmp_path / "raw", tmp_path / "prepared", tmp_path / "logs"
    write_toy(raw, ids=16)
    assert prepare_main("toy", ["--data-dir", str(raw), "--output-dir", str(prepared), "--height", "32",
                                "--width", "16"]) == 0
    assert "no published statistics for Toy to compare with" in capsys.readouterr().out
    status = train_script.main(["--dataset", "toy", "--stage", "baseline", "--no-imagenet", "--data-dir", prepared,
                                "--logs-dir", logs, "--height", "32", "--width", "16", "--batch-size", "8",
                                "--num-instances", "4", "--epochs", "1", "--k1", "10", "--k2", "3", "--workers", "0",
                                "--device", "cpu", "--test-trials", "2"])
    assert status == 0, capsys.readouterr().err
    test = json.loads((logs / "test.json").read_text())
    assert set(test["last"]) == {"epoch", "checkpoint", "infrared_to_visible"}
    assert "epoch 1/1: Rank-1 " in (logs / "log.txt").read_text()

    spec = importlib.util.spec_from_file_location("rpnr_test_script_toy", REPO / "test.py")
    test_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_script)
    capsys.readouterr()
    assert test_script.main(["--dataset", "toy", "--data-dir", str(prepared), "--checkpoint",
                      str(logs / "model_best.pth.tar"), "--device", "cpu", "--trials", "2",
                      "--json", str(tmp_path / "toy.json")]) == 0
    out = capsys.readouterr().out
    assert "Trial 1 Infrared to Visible: Rank-1: " in out and "Mean of 2 trials Infrared to Visible" in out
    result = json.loads((tmp_path / "toy.json").read_text())
    assert result["infrared_to_visible"] == pytest.approx(test["last"]["infrared_to_visible"])
