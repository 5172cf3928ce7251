"""Every command by the same rules (DESIGN.md section 14): the output rule, the one model loader, the entry point
(one-line errors, Ctrl-C, closed pipes, value checks), report.py counting each finished run once in its group, own
images (16-bit, list files, search's own outputs, Pillow's size limit) and the run scripts' STAGES."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, official_checkpoint_state, random_model
from PIL import Image

from rpnr import FeatureExtractor, tsne
from rpnr.common.checkpoints import save_checkpoint
from rpnr.common.command import run_command
from rpnr.common.errors import UsageError
from rpnr.data.prepared import load_set
from rpnr.data.raw import read_image
from rpnr.engine.run_folder import RunFolder
from rpnr.engine.settings import TrainConfig, build_config, build_parser, named_settings, settings_notes
from rpnr.tools.extractor import image_files

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"rpnr_{name}_rules", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys, main, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A checkpoint of ours trained (so it says) on tiny_regdb's 32x16 images, trial 1."""
    path = tmp_path_factory.mktemp("rules") / "model_best.pth.tar"
    save_checkpoint({"model": random_model(3).state_dict(), "dataset": "regdb", "stage": "rpnr",
                     "args": {"height": 32, "width": 16, "dataset": "regdb", "stage": "rpnr", "trial": 1}}, path)
    return path


@pytest.fixture
def run_folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A training run's logs folder with its files, and their bytes."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.json", "test.json", "metrics.json", "curves.png", "ranks.png", "model_best.pth.tar"):
        (run / name).write_bytes(f"{name} of the run".encode())
    return run, {p.name: p.read_bytes() for p in run.iterdir()}


def test_no_command_writes_over_a_run_or_its_own_inputs(capsys, run_folder, model_file, tiny_regdb, tmp_path):
    run, before = run_folder
    report, search, export, test = (_script(n).main for n in ("report", "search", "export", "test"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(images / "a.png")
    cases = [
        (report, (run, "--csv", run / "test.json"), f"report.py: error: --csv {run / 'test.json'} is the training "
                                                     f"run's own test.json; write elsewhere"),
        (report, (run, "--csv", run / "model_best.pth.tar"), "is the training run's own model_best.pth.tar"),
        (report, (run, "--csv", tmp_path / "t", "--markdown", tmp_path / "t"),
         f"report.py: error: --csv {tmp_path / 't'} and --markdown {tmp_path / 't'} are the same file; give each its "
         f"own"),
        (export, ("--checkpoint", model_file, "--modality", "visible", "--onnx", model_file),
         f"export.py: error: --onnx {model_file} is --checkpoint {model_file}, which this command reads; write "
         f"elsewhere"),
        (export, ("--checkpoint", model_file, "--modality", "visible", "--onnx", "/proc/x.onnx"),
         "export.py: error: cannot write --onnx /proc/x.onnx: files cannot be created in /proc"),
        (search, ("--checkpoint", model_file, "--query", images, "--gallery", images, "--query-modality", "thermal",
                  "--gallery-modality", "visible", "--out", run, "--device", "cpu"),
         f"search.py: error: --out {run} is a training run's logs folder; choose another folder"),
        (tsne.main, ("--checkpoint", model_file, "--dataset", "regdb", "--data-dir", tiny_regdb, "--out",
                     run / "curves.png", "--device", "cpu"),
         f"rpnr.tools.tsne: error: --out {run / 'curves.png'} is the training run's own curves.png; write elsewhere"),
        (test, ("--dataset", "regdb", "--data-dir", tiny_regdb, "--checkpoint", model_file, "--trials", 1, "--json",
                tiny_regdb / "result.json", "--device", "cpu"),
         f"test.py: error: --json {tiny_regdb / 'result.json'} lies inside --data-dir {tiny_regdb}, a prepared data "
         f"folder this command reads; write elsewhere"),
    ]
    for main, args, line in cases:
        status, out, err = _run(capsys, main, *args)
        assert status == 1 and err.strip().count("\n") == 0 and line in err, (args, err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert model_file.stat().st_size > 1000 and not (tmp_path / "t").exists()
    assert not (tiny_regdb / "result.json").exists()


def test_one_model_loader_checks_sizes_everywhere(capsys, model_file, tiny_regdb, tmp_path):
    with pytest.raises(UsageError, match=r"--height/--width 64x32 contradict \S+, which was trained at 32x16"):
        FeatureExtractor(model_file, "cpu", height=64, width=32)
    for bad in (0, -1, 2.5):
        with pytest.raises(UsageError, match="batch_size must be"):
            FeatureExtractor(model_file, "cpu", batch_size=bad)
    extractor = FeatureExtractor(model_file, "cpu")
    for bad in (None, 3, {"a": 1}):
        with pytest.raises(UsageError, match="images must be a file path, a PIL image"):
            extractor(bad, "visible")
    wide = tmp_path / "wide.pth"  # trained at 64x32, drawn on 32x16 data: said, not silent
    save_checkpoint({"model": random_model(3).state_dict(), "dataset": "regdb", "stage": "rpnr",
                     "args": {"height": 64, "width": 32, "dataset": "regdb", "stage": "rpnr", "trial": 1}}, wide)
    status, out, err = _run(capsys, tsne.main, "--checkpoint", wide, "--dataset", "regdb", "--data-dir", tiny_regdb,
                            "--ids", 2, "--device", "cpu", "--out", tmp_path / "t.png")
    assert status == 0, err
    assert f"warning: {wide} was trained at 64x32 but {tiny_regdb} holds 32x16 images" in out
    release = tmp_path / "release.pth"  # records no size: search.py takes --height/--width for it
    save_checkpoint({"state_dict": official_checkpoint_state(random_model(3))}, release)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for k in range(3):
        Image.fromarray(np.full((40, 20, 3), 60 * k, np.uint8)).save(gallery / f"{k}.png")
    search = _script("search").main
    args = ("--checkpoint", release, "--query", gallery, "--gallery", gallery, "--query-modality", "visible",
            "--gallery-modality", "visible", "--device", "cpu", "--out", tmp_path / "found")
    status, _, err = _run(capsys, search, *args)
    assert status == 1 and "records no image size (a release checkpoint?): pass height and width" in err
    status, out, err = _run(capsys, search, *args, "--height", 32, "--width", 16)
    assert status == 0 and "at 32x16" in out, err


def test_interrupts_and_closed_pipes(capsys, tmp_path):
    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted, "report.py") == 130
    assert capsys.readouterr().err == "report.py: interrupted; nothing was written\n"
    runs = tmp_path / "runs"
    for k in range(60):  # 60 groups: a table longer than the pipe's buffer
        _finished_run(runs / f"r{k}", dataset="regdb", lr=1e-4 * (k + 1))
    done = subprocess.run(f"{sys.executable} {REPO / 'report.py'} {runs} --csv {tmp_path / 's.csv'} | head -n 2",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "" and len(done.stdout.splitlines()) == 2, done.stderr
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 1 + 60 * 2 * 2 * 6


# ----------------------------------------------------------------------------- report.py: each run once


def _finished_run(folder: Path, dataset: str = "sysu", stage: str = "rpnr", rank1: float = 60.0, seed: int = 1,
                  data_id: str | None = "d1", start: dict | None = None, epochs: int = 2, **args) -> Path:
    """A finished run folder as train.py leaves it (run.json, metrics.json, test.json)."""
    settings = dataclasses.asdict(TrainConfig(dataset=dataset, stage=stage, data_dir="d", logs_dir=str(folder),
                                              seed=seed, epochs=epochs, **args))
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"args": settings, "data_id": data_id, "start": start,
                                                 "started": f"{folder}"}))
    (folder / "metrics.json").write_text(json.dumps([{"epoch": e} for e in range(1, epochs + 1)]))
    settings_names = {"sysu": ("all",), "regdb": ("visible_to_thermal", "thermal_to_visible")}[dataset]
    metrics = {m: rank1 + i for i, m in enumerate(("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"))}
    (folder / "test.json").write_text(json.dumps({
        model: {"epoch": epochs, **{s: {**metrics, "per_trial": [{"trial": 0, **metrics}]} for s in settings_names}}
        for model in ("best", "last")}))
    return folder


def _report(capsys, *args) -> tuple[int, str, str]:
    return _run(capsys, _script("report").main, *args)


def test_report_counts_a_run_once_however_reached(capsys, tmp_path, monkeypatch):
    one = _finished_run(tmp_path / "runs" / "a", rank1=60.0)
    _finished_run(tmp_path / "runs" / "b", rank1=70.0, seed=2)
    (tmp_path / "link").symlink_to(one)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in one.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    monkeypatch.chdir(tmp_path)
    status, out, err = _report(capsys, "runs", tmp_path / "runs", "link", copy)
    assert status == 0, err
    assert "SYSU-MM01 stage 2 (rpnr): 2 run(s)" in out and "65.00 ± 7.07" in out
    assert err.strip().splitlines() == [f"duplicate: {copy} holds the same run as runs/a (the same run.json); "
                                        f"counted once"]


def test_report_leaves_out_runs_in_progress_and_stale_tests(capsys, tmp_path):
    live = _finished_run(tmp_path / "live")
    stale = _finished_run(tmp_path / "stale", epochs=1)
    record = json.loads((stale / "run.json").read_text())
    record["resumed"] = [{"args": {**record["args"], "epochs": 2}}]  # resumed for one more epoch, then killed
    (stale / "run.json").write_text(json.dumps(record))
    (stale / "metrics.json").write_text(json.dumps([{"epoch": 1}, {"epoch": 2}]))
    _finished_run(tmp_path / "good")
    holder = RunFolder(live)
    holder.lock()
    try:
        status, out, err = _report(capsys, tmp_path)
    finally:
        holder.release()
    assert status == 0 and "1 run(s)" in out
    assert err.strip().splitlines() == [
        f"unfinished: {live} (a run is in progress in it; not averaged)",
        f"unfinished: {stale} (its test.json is of epoch 1, but the run went on to epoch 2: it did not end; not "
        f"averaged)"]


def test_report_groups_by_data_and_start(capsys, tmp_path):
    imagenet_start = {"path": "s1/model_best.pth.tar", "sha256": "a" * 64, "recipe": {"imagenet": True, "lr": 1e-3}}
    random_start = {**imagenet_start, "recipe": {"imagenet": False, "lr": 1e-3}}
    _finished_run(tmp_path / "a", rank1=60.0, start=imagenet_start)
    _finished_run(tmp_path / "b", rank1=62.0, start=imagenet_start, seed=2)
    _finished_run(tmp_path / "c", rank1=20.0, start=random_start)
    _finished_run(tmp_path / "d", rank1=30.0, start=imagenet_start, data_id="d2")
    nan = _finished_run(tmp_path / "e", rank1=float("nan"), start=imagenet_start)
    status, out, err = _report(capsys, tmp_path, "--csv", tmp_path / "t.csv")
    assert status == 0, err
    assert "2 run(s); settings data=d1, start={imagenet=true}" in out
    assert "1 run(s); settings data=d1, start={imagenet=false}" in out and "1 run(s); settings data=d2" in out
    assert err.strip() == f"skipped: {nan / 'test.json'} holds a Rank-1 that is not a number (best model, all); not " \
                          f"averaged"


# ----------------------------------------------------------------------------- own images


def test_sixteen_bit_images_are_scaled_and_huge_ones_named(tmp_path):
    values = np.linspace(0, 65535, 64 * 32).reshape(64, 32).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "thermal16.png")
    got = read_image(tmp_path / "thermal16.png", 64, 32, "bicubic")[:, :, 0].astype(int)
    assert np.abs(got - np.round(values / 257.0)).max() <= 1 and got.min() == 0 and got.max() == 255
    Image.new("L", (12000, 9000)).save(tmp_path / "huge.png")
    with pytest.raises(Exception, match=r"^cannot read image \S+huge\.png: it is 12000x9000 pixels, more than "
                                        r"Pillow's limit of 89,478,485 pixels"):
        read_image(tmp_path / "huge.png", 64, 32, "lanczos")


def test_list_files_with_a_bom_and_crlf_and_search_skips_its_own_outputs(capsys, tmp_path, model_file, tiny_regdb):
    gallery = tmp_path / "gallery"
    for rel in load_set(tiny_regdb, "visible_test").paths[:4]:
        (gallery / Path(rel).parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(tiny_regdb.parent / "raw" / rel).save(gallery / Path(rel).parent.name / (Path(rel).stem + ".png"))
    listed = sorted(gallery.rglob("*.png"))
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf" + "".join(f"{p.relative_to(tmp_path)}\r\n"
                                                                   for p in listed).encode())
    assert image_files(tmp_path / "list.txt") == listed
    search = _script("search").main
    for _ in range(2):  # the second search finds the first one's ranks.png inside the gallery and skips it
        status, out, err = _run(capsys, search, "--checkpoint", model_file, "--query", tmp_path / "list.txt",
                                "--gallery", gallery, "--query-modality", "visible", "--gallery-modality", "visible",
                                "--device", "cpu", "--out", gallery / "found")
        assert status == 0, err
        ranked = (gallery / "found" / "ranks.csv").read_text()
        assert "found" not in ranked.replace(str(gallery / "found"), "") and len(ranked.splitlines()) == 1 + 4 * 4


# ----------------------------------------------------------------------------- scripts and settings


def test_stages_other_than_1_2_are_refused_before_anything_runs(tmp_path):
    env = {**os.environ, "STAGES": "3", "DEVICE": "cpu"}
    done = subprocess.run(["bash", str(REPO / "run_train_regdb.sh")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith('error: STAGES="3" is not one of')
    assert list(tmp_path.iterdir()) == []


def test_settings_a_stage_does_not_use_are_named(tiny_regdb):
    argv = ["--dataset", "regdb", "--stage", "rpnr", "--data-dir", str(tiny_regdb), "--imagenet", "r50.pth",
            "--device", "cpu", "--compile"]
    cfg = build_config(vars(build_parser().parse_args(argv)))
    assert settings_notes(cfg, named_settings(argv)) == [
        "warning: --imagenet applies to stage 1 (--stage baseline) only; this run ignores it",
        "warning: --compile on the CPU compiles for minutes before the first iteration (a tiny run took 4 min 18 s "
        "instead of 1 min 10 s); leave it out unless you measure it"]
    argv = ["--dataset", "regdb", "--stage", "baseline", "--data-dir", str(tiny_regdb), "--w-nrl", "3"]
    assert settings_notes(build_config(vars(build_parser().parse_args(argv))), named_settings(argv)) == [
        "warning: --w-nrl applies to stage 2 (--stage rpnr) only; this run ignores it"]
