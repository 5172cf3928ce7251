"""docs/extending.md's worked examples, applied as written to a copy of the repository: a toy loss term (two files)
and a toy cluster matcher (one file), then one tiny stage-2 run that uses both."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, random_model

from rpnr.common.checkpoints import save_checkpoint

BLOCK = re.compile(r"```python\n# (\S+): (at the end|after the line starting \"([^\"]+)\")\n(.*?)```", re.S)


def apply_examples(root: Path) -> list[str]:
    """Every edit of docs/extending.md made under ``root``; the files touched."""
    touched = []
    for path, _, anchor, code in BLOCK.findall((REPO / "docs" / "extending.md").read_text()):
        target = root / path
        lines = target.read_text().splitlines(keepends=True)
        if anchor:
            at = next(i for i, line in enumerate(lines) if line.startswith(anchor))
            while not lines[at].rstrip().endswith(")"):  # the whole (wrapped) line
                at += 1
            lines.insert(at + 1, code)
        else:
            lines += ["\n\n", code]
        target.write_text("".join(lines))
        touched.append(path)
    return touched


def test_a_loss_term_and_a_matcher_as_the_docs_add_them(tiny_regdb, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "rpnr", root / "rpnr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "train.py", root)
    assert sorted(set(apply_examples(root))) == ["rpnr/engine/settings.py", "rpnr/matching.py", "rpnr/training.py"]
    baseline = tmp_path / "s1.pth"
    save_checkpoint({"model": random_model(2).state_dict(), "dataset": "regdb", "stage": "baseline",
                     "args": {"dataset": "regdb", "stage": "baseline", "trial": 1, "height": 32, "width": 16}},
                    baseline)
    logs = tmp_path / "logs"
    done = subprocess.run(
        [sys.executable, str(root / "train.py"), "--dataset", "regdb", "--stage", "rpnr", "--data-dir",
         str(tiny_regdb), "--baseline", str(baseline), "--logs-dir", str(logs), "--height", "32", "--width", "16",
         "--batch-size", "8", "--num-instances", "4", "--iters", "2", "--epochs", "1", "--k1", "10", "--k2", "3",
         "--eps", "0.6", "--workers", "0", "--device", "cpu", "--w-toy", "0.5", "--matcher", "nearest"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((logs / "metrics.json").read_text())[0]
    assert math.isfinite(record["loss_toy"]) and record["loss_toy"] >= 0
    weighted = sum(w * record[f"loss_{k}"] for k, w in (("ir", 1), ("rgb", 1), ("cross", 0.25), ("hybrid", 0.5),
                                                        ("nrl", 10), ("toy", 0.5)))
    assert math.isclose(weighted, record["loss_total"], rel_tol=1e-4)
    assert json.loads((logs / "run.json").read_text())["args"]["matcher"] == "nearest"
    assert f" toy {record['loss_toy']:.5g} " in (logs / "log.txt").read_text()
