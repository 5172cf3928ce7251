"""The top-level shell scripts, run with a stand-in ``python`` and ``torchrun`` on PATH that record their
command lines (nothing is trained, each test takes a fraction of a second): the settings block comes first
and lists every setting, a misspelt setting warns, relative paths stay relative to the caller's folder,
RESUME=1 passes no start weights, and under NPROC > 1 plain python checks each stage before torchrun; the
recipe values the run scripts keep in view are the registry's and the settings' defaults."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("run_train_sysu.sh", "run_train_regdb.sh", "run_train_llcm.sh", "test_sysu.sh", "test_regdb.sh",
           "test_llcm.sh", "run_demo.sh")

# the stand-in: one JSON line per call (program, arguments, folder, WORLD_SIZE); creates --logs-dir as train.py
# would; FAKE_CHECK_FAILS=1 makes `train.py ... --check` fail as train.py does (one error line, status 1)
RECORDER = f"""#!{sys.executable}
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": argv, "cwd": os.getcwd(),
                         "world_size": os.environ.get("WORLD_SIZE")}}) + "\\n")
print("ran " + os.path.basename(sys.argv[0]), flush=True)
if "--logs-dir" in argv:
    os.makedirs(argv[argv.index("--logs-dir") + 1], exist_ok=True)
if "--check" in argv and os.environ.get("FAKE_CHECK_FAILS") == "1":
    print("error: --batch-size 8 is not divisible by --num-instances 3", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def run_script(tmp_path):
    """run_script(name, **env) -> (completed process, recorded calls): the script run from a fresh folder
    (``tmp_path / "work"``) with the stand-ins first on PATH."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    for prog in ("python", "torchrun"):
        (bin_dir / prog).write_text(RECORDER)
        (bin_dir / prog).chmod(0o755)
    calls = tmp_path / "calls.jsonl"

    def run(name: str, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        calls.unlink(missing_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "PYTHONPATH")}
        full = {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_CALLS": str(calls), **env}
        done = subprocess.run(["bash", str(REPO / name)], cwd=work, env=full, capture_output=True, text=True,
                              timeout=60)
        recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        return done, recorded

    return run


def settings_of(name: str) -> list[str]:
    """The variables a script reads from the environment (``NAME=${NAME:-...}``), in order; run_train_llcm.sh
    sets some and runs run_train_sysu.sh, whose settings it has."""
    text = (REPO / name).read_text()
    return re.findall(r"^(?:export )?([A-Z][A-Z0-9_]*)=\$\{\1:-", text, flags=re.M)


def settings_block(stdout: str) -> dict[str, str]:
    """NAME -> value of the settings block at the start of ``stdout`` (the first line and its indented
    continuation lines)."""
    lines = stdout.splitlines()
    assert lines and lines[0].startswith("settings: "), stdout[:500]
    block = [lines[0][len("settings:"):]]
    for line in lines[1:]:
        if not line.startswith(" "):
            break
        block.append(line)
    return dict(re.findall(r'([A-Z][A-Z0-9_]*)=("[^"]*"|\S*)', " ".join(block)))


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_settings_block_comes_first_and_lists_every_setting(run_script, name):
    done, calls = run_script(name, DATA_DIR="prepared/x", EXTRA="--k1 10 --k2 3")
    shown = settings_block(done.stdout)
    expected = settings_of("run_train_sysu.sh" if name == "run_train_llcm.sh" else name)
    assert expected and list(shown) == expected, (list(shown), expected)
    if "DATA_DIR" in shown:
        assert shown["DATA_DIR"] == "prepared/x"  # the value in effect, as given
    if "EXTRA" in shown:
        assert shown["EXTRA"] == '"--k1 10 --k2 3"'
    if name == "run_train_llcm.sh":
        assert shown["DATASET"] == "llcm" and shown["EPS"] == "0.6"
    assert calls and done.stdout.index("settings:") < done.stdout.index("ran ")  # before anything runs
    assert "warning:" not in done.stderr


@pytest.mark.parametrize("name", ["run_train_sysu.sh", "run_train_llcm.sh", "test_regdb.sh"])
def test_a_misspelt_setting_warns_and_names_the_setting(run_script, name):
    done, calls = run_script(name, EPOCH="1", epochs="3", TRAILS="2", OUT_DIRS="x", S3_DIR="y", CHECKPIONT="c",
                             HOME=os.environ.get("HOME", "/root"), DEVICE="cpu", PATH_EXTRA="z")
    warnings = sorted(line for line in done.stderr.splitlines() if line.startswith("warning:"))
    if name == "test_regdb.sh":
        assert warnings == ["warning: CHECKPIONT=c is not a setting of test_regdb.sh; did you mean CHECKPOINT?",
                            "warning: OUT_DIRS=x is not a setting of test_regdb.sh; did you mean OUT_DIR?"]
    else:
        assert warnings == [f"warning: EPOCH=1 is not a setting of {name}; did you mean EPOCHS?",
                            f"warning: S3_DIR=y is not a setting of {name}; did you mean S1_DIR or S2_DIR?",
                            f"warning: epochs=3 is not a setting of {name}; did you mean EPOCHS?"]
    assert calls, "a warning does not stop the script"
    assert settings_block(done.stdout)["DEVICE"] == "cpu"


def test_relative_paths_are_relative_to_the_callers_folder(run_script, tmp_path):
    done, calls = run_script("run_train_sysu.sh", DATA_DIR="data/mine", S1_DIR="runs/s1", S2_DIR="runs/s2")
    assert done.returncode == 0, done.stderr
    train = [c for c in calls if c["argv"][0] == str(REPO / "train.py")]
    assert len(train) == 2 and all(c["cwd"] == str(tmp_path / "work") for c in calls)
    for call, logs in zip(train, ("runs/s1", "runs/s2")):
        argv = call["argv"]
        assert argv[argv.index("--data-dir") + 1] == "data/mine" and argv[argv.index("--logs-dir") + 1] == logs
    assert calls[-1]["argv"] == [str(REPO / "report.py"), "runs/s2", "--csv", "runs/s2/summary.csv"]
    assert (tmp_path / "work" / "runs" / "s2" / "summary.txt").is_file()
    done, calls = run_script("test_sysu.sh", OUT_DIR="tested", CHECKPOINT="runs/s2/model_best.pth.tar")
    assert done.returncode == 0, done.stderr
    assert [c["argv"][0] for c in calls] == [str(REPO / "test.py")] * 2
    assert (tmp_path / "work" / "tested" / "all.log").is_file() and not (REPO / "tested").exists()


def _start(argv: list[str]) -> list[str]:
    """The start flags of a recorded train.py command line."""
    start = [a for a in argv if a in ("--resume", "--imagenet", "--no-imagenet")]
    if "--imagenet" in argv:
        start.append(argv[argv.index("--imagenet") + 1])
    if "--baseline" in argv:
        start += ["--baseline", argv[argv.index("--baseline") + 1]]
    return start


def test_resume_passes_no_start_weights_to_a_resumed_stage(run_script, tmp_path):
    work = tmp_path / "work"
    env = {"S1_DIR": "s1", "S2_DIR": "s2"}
    done, calls = run_script("run_train_sysu.sh", IMAGENET="weights/r50.pth", **env)
    assert [_start(c["argv"]) for c in calls[:2]] == [["--imagenet", "weights/r50.pth"],
                                                       ["--baseline", "s1/model_best.pth.tar"]]
    (work / "s1" / "checkpoint.pth.tar").touch()
    # stage 1 resumes (its start weights stay those its record names), stage 2 starts afresh
    done, calls = run_script("run_train_sysu.sh", RESUME="1", IMAGENET="weights/r50.pth", **env)
    assert [_start(c["argv"]) for c in calls[:2]] == [["--resume"], ["--baseline", "s1/model_best.pth.tar"]]
    (work / "s2" / "checkpoint.pth.tar").touch()
    done, calls = run_script("run_train_sysu.sh", RESUME="1", IMAGENET="none", **env)
    assert done.returncode == 0, done.stderr
    assert [_start(c["argv"]) for c in calls[:2]] == [["--resume"], ["--resume"]]
    done, calls = run_script("run_train_sysu.sh", IMAGENET="none", **env)  # RESUME=0: fresh starts asked for
    assert [_start(c["argv"]) for c in calls[:2]] == [["--no-imagenet"], ["--baseline", "s1/model_best.pth.tar"]]


def test_regdb_resumes_each_trial_on_its_own(run_script, tmp_path):
    (tmp_path / "work" / "s1" / "2").mkdir(parents=True)
    (tmp_path / "work" / "s1" / "2" / "checkpoint.pth.tar").touch()
    done, calls = run_script("run_train_regdb.sh", S1_DIR="s1", S2_DIR="s2", TRIALS="1 2", RESUME="1")
    assert done.returncode == 0, done.stderr
    assert [_start(c["argv"]) for c in calls[:4]] == [
        ["--imagenet", "torchvision"], ["--baseline", "s1/1/model_best.pth.tar"],
        ["--resume"], ["--baseline", "s1/2/model_best.pth.tar"]]


@pytest.mark.parametrize("name", ["run_train_sysu.sh", "run_train_regdb.sh"])
def test_each_torchrun_launch_is_checked_first_by_plain_python(run_script, name):
    done, calls = run_script(name, NPROC="2", TRIALS="1", S1_DIR="s1", S2_DIR="s2")
    assert done.returncode == 0, done.stderr
    progs = [(c["prog"], "--check" in c["argv"]) for c in calls]
    assert progs == [("python", True), ("torchrun", False)] * 2 + [("python", False)]
    for check, launch in ((calls[0], calls[1]), (calls[2], calls[3])):
        assert check["argv"] == [str(REPO / "train.py"), *launch["argv"][4:], "--check"]
        assert launch["argv"][:4] == ["--standalone", "--nproc_per_node", "2", str(REPO / "train.py")]
        assert check["world_size"] == "2" and "--bn-splits" in check["argv"]
    assert _start(calls[2]["argv"]) == ["--baseline", "s1/1/model_best.pth.tar" if "regdb" in name else
                                        "s1/model_best.pth.tar"]
    done, calls = run_script(name, NPROC="1", TRIALS="1", S1_DIR="t1", S2_DIR="t2")
    assert not any("--check" in c["argv"] for c in calls)  # one process: train.py's own error is the last line


def test_a_failed_check_stops_the_script_with_its_line_last(run_script):
    done, calls = run_script("run_train_sysu.sh", NPROC="2", FAKE_CHECK_FAILS="1")
    assert done.returncode == 1
    assert [c["prog"] for c in calls] == ["python"] and "--check" in calls[0]["argv"]
    assert done.stderr.strip().splitlines()[-1] == "error: --batch-size 8 is not divisible by --num-instances 3"


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_seeds_run_the_recipe_once_per_seed_then_report_them(run_script):
    done, calls = run_script("run_train_sysu.sh", SEEDS="1 2", S1_DIR="s1", S2_DIR="s2")
    assert done.returncode == 0, done.stderr
    train = [(_flag(c["argv"], "--stage"), _flag(c["argv"], "--seed"), _flag(c["argv"], "--logs-dir"),
              _flag(c["argv"], "--baseline")) for c in calls[:-1]]
    assert train == [("baseline", "1", "s1/seed1", None), ("rpnr", "1", "s2/seed1", "s1/seed1/model_best.pth.tar"),
                     ("baseline", "2", "s1/seed2", None), ("rpnr", "2", "s2/seed2", "s1/seed2/model_best.pth.tar")]
    assert calls[-1]["argv"] == [str(REPO / "report.py"), "s2/seed1", "s2/seed2", "--csv", "s2/summary.csv"]
    # stage 2 alone, with a switch of its own (stage 1 would refuse it)
    done, calls = run_script("run_train_sysu.sh", SEEDS="3", STAGES="2", S2_EXTRA="--no-nrl", S1_DIR="s1",
                             S2_DIR="ablation/no_nrl")
    assert done.returncode == 0, done.stderr
    assert [(_flag(c["argv"], "--stage"), "--no-nrl" in c["argv"], _flag(c["argv"], "--baseline"))
            for c in calls[:-1]] == [("rpnr", True, "s1/seed3/model_best.pth.tar")]
    assert calls[-1]["argv"][1:2] == ["ablation/no_nrl/seed3"]
    done, calls = run_script("run_train_sysu.sh", S1_DIR="s1", S2_DIR="s2")  # no SEEDS: one run, no seed folder
    assert [_flag(c["argv"], "--logs-dir") for c in calls[:-1]] == ["s1", "s2"]
    assert calls[-1]["argv"][1:2] == ["s2"] and _flag(calls[0]["argv"], "--seed") == "1"


def test_regdb_seeds_times_trials(run_script):
    done, calls = run_script("run_train_regdb.sh", SEEDS="1 2", TRIALS="3 4", S1_DIR="s1", S2_DIR="s2")
    assert done.returncode == 0, done.stderr
    stage2 = [(_flag(c["argv"], "--seed"), _flag(c["argv"], "--trial"), _flag(c["argv"], "--logs-dir"))
              for c in calls if _flag(c["argv"], "--stage") == "rpnr"]
    assert stage2 == [("1", "3", "s2/seed1/3"), ("1", "4", "s2/seed1/4"), ("2", "3", "s2/seed2/3"),
                      ("2", "4", "s2/seed2/4")]
    assert calls[-1]["argv"] == [str(REPO / "report.py"), "s2/seed1/3", "s2/seed1/4", "s2/seed2/3", "s2/seed2/4",
                                 "--csv", "s2/summary.csv"]


# a run script's setting -> where its default lives: a registry attribute or a TrainConfig field
DEFAULTS = {"EPS": ("registry", "eps"), "ITERS": ("registry", "iters"), "BATCH": ("settings", "batch_size"),
            "INSTANCES": ("settings", "num_instances"), "EPOCHS": ("settings", "epochs"),
            "MOMENTUM": ("settings", "momentum"), "HEIGHT": ("settings", "height"), "WIDTH": ("settings", "width")}


@pytest.mark.parametrize("dataset", ["sysu", "regdb", "llcm"])
def test_run_scripts_keep_the_registry_and_settings_defaults_in_view(dataset):
    """Each run_train_<dataset>.sh shows its recipe's values for editing; they may not drift from the defaults
    train.py has without them."""
    import dataclasses

    from rpnr.data.registry import get_dataset
    from rpnr.engine.settings import TrainConfig

    text = (REPO / f"run_train_{dataset}.sh").read_text()
    shown = dict(re.findall(r"^(?:export )?([A-Z_]+)=\$\{\1:-([^}]*)\}", text, flags=re.M))
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, (kind, attribute) in DEFAULTS.items():
        want = getattr(get_dataset(dataset), attribute) if kind == "registry" else fields[attribute]
        assert name in shown and float(shown[name]) == float(want), (dataset, name, shown.get(name), want)
