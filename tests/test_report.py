"""report.py: run folders found, grouped by recipe, means and sds recomputed by hand, the ablation "settings"
column, published numbers, unfinished and damaged runs, and the one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import statistics
import types
from pathlib import Path

import pytest

from rpnr.data.published import METRICS
from rpnr.engine.settings import TrainConfig, recipe

REPO = Path(__file__).resolve().parents[1]


def _metrics(base: float) -> dict:
    return {m: base + i for i, m in enumerate(METRICS)}


def _write_run(folder: Path, dataset: str, stage: str, base: float, trials: list[float] | None = None,
               finished: bool = True, commit: str = "a" * 40, **settings) -> None:
    """A run folder as train.py leaves it: run.json, metrics.json and (finished) test.json; each test setting's
    metrics are ``base`` + offsets, its per-trial values ``trials`` (their mean is ``base``)."""
    args = dataclasses.asdict(TrainConfig(dataset=dataset, stage=stage, data_dir="d", logs_dir=str(folder),
                                          **settings))
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"args": args, "git": {"commit": commit, "dirty": False},
                                                 "versions": {"torch": "2.14.1"}}))
    (folder / "metrics.json").write_text(json.dumps([{"epoch": 1, "purity_rgb": 0.5, "ari_rgb": 0.1, "nmi_rgb": 0.2,
                                                      "purity_ir": 0.7, "ari_ir": 0.3, "nmi_ir": 0.4}]))
    if not finished:
        return
    names = {"sysu": ("all",), "regdb": ("visible_to_thermal", "thermal_to_visible")}[dataset]
    trials = trials or [base]

    def result(offset: float) -> dict:
        return {**_metrics(base + offset), "per_trial": [{"trial": t, **_metrics(v + offset)}
                                                         for t, v in enumerate(trials)]}

    (folder / "test.json").write_text(json.dumps({
        "best": {"epoch": 3, **{name: result(10.0 * k) for k, name in enumerate(names)}},
        "last": {"epoch": 5, **{name: result(10.0 * k - 1.0) for k, name in enumerate(names)}}}))


@pytest.fixture
def _report(capsys):
    """report.py's main() -> (exit status, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("report_script", REPO / "report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def run(*args):
        capsys.readouterr()
        status = script.main([str(a) for a in args])
        out = capsys.readouterr()
        return types.SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)

    return run


def _rows(path: Path) -> dict:
    with open(path) as fh:
        return {(r["dataset"], r["stage"], r["settings"], r["test_setting"], r["model"], r["metric"]): r
                for r in csv.DictReader(fh)}


def test_recipe_leaves_out_where_and_how_a_run_ran():
    base = dataclasses.asdict(TrainConfig(dataset="regdb", stage="rpnr", data_dir="d", logs_dir="l"))
    moved = {**base, "seed": 7, "trial": 3, "data_dir": "e", "logs_dir": "m", "baseline": "b.pth", "workers": 0,
             "device": "cuda", "feature_batch_size": 8, "test_trials": 2, "low_memory": True, "resume": True}
    assert recipe(moved) == recipe(base)
    for name, value in (("eps", 0.5), ("no_nrl", True), ("bn_splits", 1), ("amp", False), ("lr", 1e-3)):
        assert recipe({**base, name: value}) != recipe(base), name
    assert recipe({**base, "imagenet": "/w/resnet50.pth"})["imagenet"] is True
    assert recipe({**base, "imagenet": None})["imagenet"] is False
    old = {k: v for k, v in base.items() if k not in ("no_npc", "no_nrl")}  # a run from before the switches
    assert recipe(old) == recipe(base)


def test_report_groups_runs_and_recomputes_every_statistic(tmp_path, _report):
    root = tmp_path / "runs"
    for seed, base in ((1, 60.0), (2, 62.0), (3, 67.0)):  # three seeds of SYSU's default stage 2
        _write_run(root / f"sysu/seed{seed}", "sysu", "rpnr", base, trials=[base - 1.0, base + 1.0, base + 3.0 - 3.0],
                   seed=seed)
    for seed, base in ((1, 50.0), (2, 54.0)):  # an ablation: without NRL
        _write_run(root / f"sysu_nonrl/seed{seed}", "sysu", "rpnr", base, no_nrl=True, seed=seed)
    for trial, base in ((1, 90.0), (2, 80.0)):  # RegDB: one model per trial
        _write_run(root / f"regdb/{trial}", "regdb", "rpnr", base, trial=trial)
    _write_run(root / "sysu_s1", "sysu", "baseline", 40.0)
    _write_run(root / "killed", "sysu", "rpnr", 0.0, finished=False)
    done = _report(root, "--csv", tmp_path / "t.csv", "--markdown", tmp_path / "t.md")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [f"unfinished: {root / 'killed'} (no test.json: the run did not end; "
                                                "not averaged)"]
    rows = _rows(tmp_path / "t.csv")
    assert len(rows) == (2 * 1 + 1 * 2 + 1) * 2 * 6  # groups x settings x models x metrics
    r = rows[("sysu", "rpnr", "no_nrl=false", "all", "best", "rank1")]
    assert int(r["runs"]) == 3
    assert float(r["mean"]) == pytest.approx(statistics.fmean([60, 62, 67]), abs=1e-4)
    assert float(r["sd"]) == pytest.approx(statistics.stdev([60, 62, 67]), abs=1e-4)
    assert float(r["trial_sd"]) == pytest.approx(statistics.stdev([-1.0, 1.0, 0.0]), abs=1e-4)
    assert (float(r["published"]), float(r["published_sd"])) == (65.49, 1.13)
    last = rows[("sysu", "rpnr", "no_nrl=false", "all", "last", "mAP")]
    assert float(last["mean"]) == pytest.approx(statistics.fmean([60, 62, 67]) + 4 - 1, abs=1e-4)
    assert last["published"] == "" and last["published_sd"] == ""  # the release selected on the test set
    ablated = rows[("sysu", "rpnr", "no_nrl=true", "all", "best", "mINP")]
    assert (int(ablated["runs"]), float(ablated["mean"])) == (2, 52.0 + 5)
    assert float(ablated["sd"]) == pytest.approx(statistics.stdev([50, 54]), abs=1e-4)
    assert float(ablated["published"]) == 44.02  # the release's number stands beside every stage-2 group
    regdb = rows[("regdb", "rpnr", "", "thermal_to_visible", "best", "rank1")]
    assert (int(regdb["runs"]), float(regdb["mean"]), float(regdb["sd"])) == (2, 95.0, pytest.approx(7.0711, 1e-4))
    assert regdb["trial_sd"] == "" and (float(regdb["published"]), float(regdb["published_sd"])) == (89.09, 1.72)
    s1 = rows[("sysu", "baseline", "", "all", "best", "rank1")]
    assert (s1["runs"], s1["sd"], s1["trial_sd"], s1["published"]) == ("1", "", "", "")

    out = done.stdout
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "SYSU-MM01 stage 2 (rpnr): 3 run(s); settings no_nrl=false" in out
    assert "  pseudo labels, last epoch, visible/infrared: purity 0.500/0.700, ARI 0.100/0.300, NMI 0.200/0.400" \
           "\n" in out
    assert "\n  all                  Rank-1     63.00 ± 3.61     1.00    62.00 ± 3.61     65.49 ± 1.13\n" in out
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0] == "| dataset | stage | settings | runs | test setting | model | Rank-1 | Rank-5 | Rank-10 | " \
                    "Rank-20 | mAP | mINP |"
    assert "| sysu | rpnr | no_nrl=true | 2 | all | best | 52.00 ± 2.83 | 53.00 ± 2.83 | 54.00 ± 2.83 | " \
           "55.00 ± 2.83 | 56.00 ± 2.83 | 57.00 ± 2.83 |" in md
    assert "| regdb | rpnr |  | release | visible_to_thermal | published | 90.31 ± 1.87 | 94.66 ± 1.42 | " \
           "96.39 ± 1.24 | 97.88 ± 0.84 | 83.35 ± 1.81 | 69.96 ± 2.30 |" in md


def test_runs_of_different_commits_are_noted(tmp_path, _report):
    _write_run(tmp_path / "a", "regdb", "rpnr", 80.0, commit="1" * 40)
    _write_run(tmp_path / "b", "regdb", "rpnr", 82.0, commit="2" * 40, trial=2)
    done = _report(tmp_path)
    assert done.returncode == 0 and "note: runs from 2 commits (1111111111, 2222222222)" in done.stdout
    legend = " ".join(done.stdout.split())  # wrapped at 100 columns: the source of the datasets shown only
    assert "RPNR release README (XiangboYin/RPNR), RegDB table" in legend and "SYSU-MM01 table" not in legend


def test_missing_empty_and_damaged(tmp_path, _report):
    done = _report(tmp_path / "nowhere")
    assert done.returncode == 1 and done.stderr.strip() == f"report.py: error: {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "empty").mkdir()
    done = _report(tmp_path / "empty")
    assert done.returncode == 1 and done.stderr.strip() == f"report.py: error: {tmp_path / 'empty'} holds no run " \
                                                           f"folder (no run.json under it)"
    _write_run(tmp_path / "runs/good", "regdb", "rpnr", 80.0)
    _write_run(tmp_path / "runs/bad", "regdb", "rpnr", 70.0)
    (tmp_path / "runs/bad/test.json").write_text('{"best": {"epoch": 3, "visible_to_thermal": {"rank1": ')
    done = _report(tmp_path / "runs", "--csv", tmp_path / "t.csv")
    assert done.returncode == 0
    assert done.stderr.strip() == f"skipped: {tmp_path / 'runs/bad/test.json'} is damaged (not the test.json " \
                                  f"train.py writes)"
    assert float(_rows(tmp_path / "t.csv")[("regdb", "rpnr", "", "visible_to_thermal", "best", "rank1")]["mean"]) \
        == 80.0
    (tmp_path / "runs/good/test.json").unlink()
    done = _report(tmp_path / "runs")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == \
        f"report.py: error: no finished run under {tmp_path / 'runs'} (2 left out above)"
