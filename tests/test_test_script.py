"""test.py and rpnr.engine.protocol against a transcription of the official test pipeline on raw images."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    KEYS,
    REPO,
    H,
    W,
    load_test_script,
    official_checkpoint_state,
    official_features,
    random_model,
    run_main,
)

from rpnr.common.checkpoints import save_checkpoint
from rpnr.engine.protocol import evaluate
from rpnr.evaluation import eval_regdb, eval_sysu

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small batches: one thread is faster


def run_test(*args) -> subprocess.CompletedProcess:
    """test.py as a command (exit status, stdout, stderr)."""
    return subprocess.run([sys.executable, str(REPO / "test.py"), "--device", "cpu", *map(str, args)],
                          capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def metrics(cmc, m_ap, m_inp) -> dict:
    """cmc[0], cmc[4], cmc[9], cmc[19] as the release prints them; a gallery of fewer than 20 images
    (the small synthetic indoor search) has a shorter curve, read at its last entry."""
    at = {k: float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10, 20)}
    return {"rank1": at[1], "rank5": at[5], "rank10": at[10], "rank20": at[20], "mAP": m_ap, "mINP": m_inp}


def official_sysu(model, data_path: str, mode: str, trials) -> list[dict]:
    """Per-trial results of the release's SYSU test loop (process_query/gallery_sysu + eval_sysu)."""
    with open(os.path.join(data_path, "exp/test_id.txt")) as fh:
        ids = ["%04d" % int(y) for y in fh.read().splitlines()[0].split(",")]  # noqa: UP031 - official
    query = []
    for pid in sorted(ids):
        for cam in ["cam3", "cam6"]:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                query.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    q_feat = official_features(model, query, "infrared")
    q_pids, q_cams = np.array([int(p[-13:-9]) for p in query]), np.array([int(p[-15]) for p in query])
    out = []
    for trial in trials:
        random.seed(trial)
        gallery = []
        for pid in sorted(ids):
            for cam in (["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]):
                img_dir = os.path.join(data_path, cam, pid)
                if os.path.isdir(img_dir):
                    gallery.append(random.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
        g_feat = official_features(model, gallery, "visible")
        distmat = -np.matmul(q_feat, np.transpose(g_feat))
        cmc, m_ap, m_inp = eval_sysu(distmat, q_pids, np.array([int(p[-13:-9]) for p in gallery]), q_cams,
                                     np.array([int(p[-15]) for p in gallery]))
        out.append(metrics(cmc, m_ap, m_inp))
    return out


def official_regdb(model, img_dir: str, trial: int) -> dict:
    """The release's RegDB test of one trial, both directions."""
    def read(modal):
        lines = open(os.path.join(img_dir, f"idx/test_{modal}_{trial}.txt")).read().splitlines()
        return [img_dir + "/" + s.split(" ")[0] for s in lines], np.array([int(s.split(" ")[1]) for s in lines])

    (v_paths, v_pids), (t_paths, t_pids) = read("visible"), read("thermal")
    f_v, f_t = official_features(model, v_paths, "visible"), official_features(model, t_paths, "infrared")
    out = {}
    for name, (q, g, qp, gp) in {"visible_to_thermal": (f_v, f_t, v_pids, t_pids),
                                 "thermal_to_visible": (f_t, f_v, t_pids, v_pids)}.items():
        cmc, m_ap, m_inp = eval_regdb(-np.matmul(q, np.transpose(g)), qp, gp)
        out[name] = metrics(cmc, m_ap, m_inp)
    return out


def mean_percent(results: list[dict]) -> dict:
    return {k: 100.0 * float(np.mean([r[k] for r in results])) for k in KEYS}


def assert_close(got: dict, want: dict, tol: float = 1e-3):
    got = {k: v for k, v in got.items() if k != "checkpoint"}  # test.py --json also records the checkpoint
    trials = got.pop("per_trial")  # and each trial's metrics, whose mean the others are
    assert set(got) == set(KEYS) and all(set(t) == {"trial", *KEYS} for t in trials)
    assert all(abs(np.mean([t[k] for t in trials]) - got[k]) < 1e-6 for k in KEYS)
    for k in KEYS:
        assert abs(got[k] - want[k]) < tol, (k, got[k], want[k])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    models = {seed: random_model(seed) for seed in (1, 2)}
    save_checkpoint({"model": models[1].state_dict(), "epoch": 3}, folder / "ours_1.pth")
    save_checkpoint({"model": models[2].state_dict()}, folder / "ours_2.pth")
    save_checkpoint({"state_dict": official_checkpoint_state(models[1]), "epoch": 3,
                     "mAP": np.float64(0.5)}, folder / "official.pth")
    return folder, models


def test_sysu_all_search_matches_official_pipeline(prepared_sysu, synthetic_sysu_raw, checkpoints, tmp_path):
    folder, models = checkpoints
    res = run_test("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", folder / "ours_1.pth",
                   "--height", H, "--width", W, "--json", tmp_path / "all.json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert sum(line.startswith("Trial ") for line in lines) == 10
    assert lines[-1].startswith("Mean of 10 trials (all-search): Rank-1: ") and "mINP: " in lines[-1]
    per_trial = official_sysu(models[1], str(synthetic_sysu_raw), "all", range(10))
    want = mean_percent(per_trial)
    got = json.loads((tmp_path / "all.json").read_text())
    assert got["checkpoint"]["path"] == str(folder / "ours_1.pth")  # one mode: the flat metrics and the checkpoint
    assert_close(got, want)
    assert 0.0 < want["mAP"] < 100.0
    trial_7 = next(line for line in lines if line.startswith("Trial 7 (all-search): "))
    assert f"mAP: {per_trial[7]['mAP']:.2%}" in trial_7  # each trial's line is that trial's result


def test_sysu_indoor_with_official_checkpoint(prepared_sysu, synthetic_sysu_raw, checkpoints, tmp_path, capsys):
    folder, models = checkpoints
    status, _, err = run_main(capsys, "--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint",
                              folder / "official.pth", "--mode", "indoor", "--trials", 4, "--json",
                              tmp_path / "indoor.json")
    assert status == 0, err
    want = mean_percent(official_sysu(models[1], str(synthetic_sysu_raw), "indoor", range(4)))
    assert_close(json.loads((tmp_path / "indoor.json").read_text()), want)


def test_evaluate_sysu_on_selected_trials(prepared_sysu, synthetic_sysu_raw, checkpoints):
    _, models = checkpoints
    result = evaluate(models[2], "sysu", prepared_sysu, ["all"], trials=[7, 2], device="cpu", batch_size=16)["all"]
    assert [r["trial"] for r in result["per_trial"]] == [7, 2]
    ref = official_sysu(models[2], str(synthetic_sysu_raw), "all", [7, 2])
    for got, want in zip(result["per_trial"], ref):
        for k in KEYS:
            assert abs(got[k] - want[k]) < 1e-5, k
    assert result["cmc"].shape == (20,)
    assert abs(result["rank1"] - (ref[0]["rank1"] + ref[1]["rank1"]) / 2) < 1e-6


def test_regdb_per_trial_checkpoints_both_directions(prepared_regdb, synthetic_regdb_raw, checkpoints, tmp_path,
                                                     capsys):
    folder, models = checkpoints
    status, out, err = run_main(capsys, "--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint",
                                folder / "ours_{trial}.pth", "--trials", 2, "--json", tmp_path / "regdb.json")
    assert status == 0, err
    got = json.loads((tmp_path / "regdb.json").read_text())
    refs = [official_regdb(models[t], str(synthetic_regdb_raw), t) for t in (1, 2)]
    for direction in ("visible_to_thermal", "thermal_to_visible"):
        assert_close(got[direction], mean_percent([r[direction] for r in refs]))
    assert "Mean of 2 trials Thermal to Visible: Rank-1: " in out
    trial_2 = next(line for line in out.splitlines() if line.startswith("Trial 2 Visible to Thermal: "))
    assert f"mAP: {refs[1]['visible_to_thermal']['mAP']:.2%}" in trial_2
    one = evaluate(models[2], "regdb", prepared_regdb, ["thermal_to_visible"], [2], device="cpu")
    assert list(one) == ["thermal_to_visible"]
    one = one["thermal_to_visible"]["per_trial"]
    assert len(one) == 1 and one[0]["trial"] == 2
    assert abs(one[0]["mAP"] - refs[1]["thermal_to_visible"]["mAP"]) < 1e-6


def test_errors_are_one_line(prepared_sysu, prepared_regdb, checkpoints, tmp_path, capsys):
    folder, _ = checkpoints
    wrong = tmp_path / "wrong.pth"
    save_checkpoint({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, wrong)
    cases = [
        (("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", tmp_path / "none.pth"),
         "checkpoint not found"),
        (("--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint", folder / "ours_{trial}.pth"),
         "ours_3.pth (trial 3)"),
        (("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", wrong, "--trials", 1),
         "does not fit the AGW model"),
        (("--dataset", "regdb", "--data-dir", prepared_sysu, "--checkpoint", folder / "ours_1.pth"),
         "holds prepared sysu data, not regdb"),
        (("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", folder / "ours_1.pth", "--height", 288),
         "was prepared at 64x32"),
        (("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", folder / "ours_1.pth", "--trials", 11),
         "--trials must be between 1 and 10"),
        (("--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint", folder / "ours_{trial}.pth", "--mode",
          "all"), "--mode applies to SYSU-MM01, not RegDB"),
    ]
    for args, message in cases:
        status, _, err = run_main(capsys, *args)
        lines = err.strip().splitlines()
        assert status == 1 and len(lines) == 1 and message in lines[0], (args, err)
    res = run_test(*cases[0][0])  # the command itself: exit status 1, one line, no traceback
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"test.py: error: checkpoint not found: {tmp_path / 'none.pth'}"]


# ----------------------------------------------------------------------------- what test.py is given (section 10)


def _recorded(folder, name: str, dataset: str, **args) -> Path:
    """A checkpoint of this project that records its dataset and training settings."""
    path = folder / name
    save_checkpoint({"model": random_model(1).state_dict(), "epoch": 2, "dataset": dataset,
                     "args": {"trial": 1, "height": H, "width": W, **args}}, path)
    return path


def test_checkpoint_of_another_dataset_or_trial_is_refused(prepared_sysu, prepared_regdb, tmp_path, capsys):
    regdb_1 = _recorded(tmp_path, "regdb_1.pth", "regdb", trial=1)
    status, _, err = run_main(capsys, "--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", regdb_1)
    assert status == 1 and err.strip() == f"test.py: error: {regdb_1} was trained on regdb, not sysu"
    status, _, err = run_main(capsys, "--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint", regdb_1,
                              "--trials", 10)
    assert status == 1 and f"{regdb_1} was trained on RegDB trial 1, not trial 2: its training identities include " \
                           f"trial 2's test identities; put {{trial}} in --checkpoint" in err
    _recorded(tmp_path, "regdb_2.pth", "regdb", trial=7)  # a template that names the wrong model
    status, _, err = run_main(capsys, "--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint",
                              tmp_path / "regdb_{trial}.pth", "--trials", 2)
    assert status == 1 and "regdb_2.pth was trained on RegDB trial 7, not trial 2" in err and "put {trial}" not in err


def test_checkpoint_records_size_and_sha256(prepared_regdb, tmp_path, capsys):
    for trial in (1, 2):
        _recorded(tmp_path, f"m_{trial}.pth", "regdb", trial=trial, height=288, width=144)
    status, out, err = run_main(capsys, "--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint",
                                tmp_path / "m_{trial}.pth", "--trials", 2, "--json", tmp_path / "out.json")
    assert status == 0, err
    assert f"warning: {tmp_path / 'm_1.pth'} was trained at 288x144 but {prepared_regdb} holds 64x32 images" in out
    record = json.loads((tmp_path / "out.json").read_text())["checkpoint"]
    assert record["path"] == str(tmp_path / "m_{trial}.pth")
    assert record["sha256"] == {str(t): hashlib.sha256((tmp_path / f"m_{t}.pth").read_bytes()).hexdigest()
                                for t in (1, 2)}


def test_official_checkpoint_gets_a_note_and_nan_weights_are_refused(prepared_sysu, checkpoints, tmp_path, capsys):
    folder, _ = checkpoints
    status, out, err = run_main(capsys, "--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint",
                                folder / "official.pth", "--trials", 1, "--json", tmp_path / "o.json")
    assert status == 0, err
    assert f"note: {folder / 'official.pth'} records no dataset, trial or image size" in out
    record = json.loads((tmp_path / "o.json").read_text())["checkpoint"]
    assert record == {"path": str(folder / "official.pth"),
                      "sha256": hashlib.sha256((folder / "official.pth").read_bytes()).hexdigest()}
    state = random_model(1).state_dict()
    state["bottleneck.weight"][3] = float("inf")
    save_checkpoint({"model": state, "dataset": "sysu", "args": {}}, tmp_path / "nan.pth")
    status, _, err = run_main(capsys, "--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint",
                              tmp_path / "nan.pth", "--trials", 1)
    assert status == 1 and "holds weights that are not finite (e.g. bottleneck.weight)" in err


# ----------------------------------------------------------------------------- where test.py writes (section 10)


def _training_run(folder: Path, marker: str = "run.json") -> dict[str, bytes]:
    """A training run's logs folder (``marker``: run.json or checkpoint.pth.tar, and its own test.json and
    ranks.png); every file's bytes."""
    folder.mkdir(parents=True)
    for name, data in ((marker, b'{"command": ["train.py"]}\n'), ("test.json", b'{"rank1": 61.2, "mAP": 57.9}\n'),
                       ("ranks.png", b"\x89PNG run's own rank list")):
        (folder / name).write_bytes(data)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_outputs_onto_a_training_runs_own_files_are_refused(prepared_sysu, checkpoints, tmp_path, capsys):
    folder, _ = checkpoints
    run, other_run = tmp_path / "logs" / "sysu_s2", tmp_path / "logs" / "sysu_s1"
    before = _training_run(run)
    _training_run(other_run, marker="checkpoint.pth.tar")
    base = ("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", folder / "ours_1.pth", "--trials", 1)
    for flag, path in (("--json", run / "test.json"), ("--ranks-png", run / "ranks.png"),
                       ("--json", run / "metrics.json"), ("--json", other_run / "test.json"),
                       ("--ranks-png", other_run / "curves.png")):
        status, out, err = run_main(capsys, *base, flag, path)
        assert status == 1 and out == "", (flag, path, out)
        assert err.strip().splitlines() == [
            f"test.py: error: {flag} {path} is the training run's own {path.name}; write elsewhere"], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing changed, nothing added
    script = load_test_script()  # the same names outside a run folder are fine
    script.check_outputs_of(argparse.Namespace(json=str(tmp_path / "logs" / "test.json"),
                                               ranks_png=str(tmp_path / "elsewhere" / "ranks.png"),
                                               data_dir=str(prepared_sysu), checkpoint=str(folder / "ours_1.pth")))


def test_outputs_that_cannot_be_written_are_refused_before_the_test(prepared_sysu, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("a file")
    Path("results").mkdir()
    locked = Path("locked")
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: pretend the folder is not writable to it either
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and access(p, mode, **kw))
    missing = tmp_path / "none.pth"  # never read: the outputs are checked first
    base = ("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", missing)
    cases = [
        (("--json", "notes.txt/m.json"), "cannot write --json notes.txt/m.json: notes.txt is a file, not a folder"),
        (("--ranks-png", "notes.txt/a/b/r.png"),
         "cannot write --ranks-png notes.txt/a/b/r.png: notes.txt is a file, not a folder"),
        (("--json", "results"), "--json results is a folder; give a file name"),
        (("--json", "locked/new/m.json"),
         "cannot write --json locked/new/m.json: no permission to write in locked (or it is read-only)"),
        (("--json", "results/m.json", "--ranks-png", "results/./m.json"),
         "--json results/m.json and --ranks-png results/./m.json are the same file; give each its own"),
    ]
    for args, line in cases:
        status, out, err = run_main(capsys, *base, *args)
        assert status == 1 and out == "", (args, out)
        assert err.strip().splitlines() == [f"test.py: error: {line}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "notes.txt", "results"]
    assert list(Path("results").iterdir()) == [] and list(locked.iterdir()) == []
    locked.chmod(0o755)


def test_same_file_for_json_and_ranks_png_is_refused_as_a_command(prepared_regdb, checkpoints, tmp_path):
    folder, _ = checkpoints
    out = tmp_path / "out.json"
    out.write_bytes(b"earlier result\n")
    res = run_test("--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint", folder / "ours_{trial}.pth",
                   "--json", out, "--ranks-png", out)
    assert res.returncode == 1 and res.stdout == "" and "Trial" not in res.stdout
    assert res.stderr.strip().splitlines() == [
        f"test.py: error: --json {out} and --ranks-png {out} are the same file; give each its own"]
    assert out.read_bytes() == b"earlier result\n"
