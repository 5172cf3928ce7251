"""Shared fixtures: small synthetic raw SYSU-MM01 / RegDB trees and their 64x32 prepared folders.

The raw trees are session-scoped and must not be modified by tests (copy them first).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rpnr.data.prepared import write_prepared
from rpnr.data.regdb import plan_regdb
from rpnr.data.synthetic import write_regdb, write_sysu
from rpnr.data.sysu import plan_sysu

REPO = Path(__file__).resolve().parents[1]
PREPARED_HEIGHT, PREPARED_WIDTH = 64, 32
SYSU_SMALL = {"train_ids": 10, "val_ids": 2, "test_ids": 6, "per_camera": 3, "height": 96, "width": 48, "seed": 0}
REGDB_SMALL = {"ids": 12, "per_modality": 4, "height": 96, "width": 48, "seed": 0}


@pytest.fixture(scope="session")
def synthetic_sysu_raw(tmp_path_factory):
    """Raw SYSU-MM01-layout tree (JPEG, 96x48): 10 train + 2 val + 6 test ids, ~3 images per camera."""
    root = tmp_path_factory.mktemp("raw") / "sysu"
    write_sysu(root, **SYSU_SMALL)
    return root


@pytest.fixture(scope="session")
def synthetic_regdb_raw(tmp_path_factory):
    """Raw RegDB-layout tree (BMP, 96x48): 12 ids, 4 visible + 4 thermal images each, trials 1..10."""
    root = tmp_path_factory.mktemp("raw") / "regdb"
    write_regdb(root, **REGDB_SMALL)
    return root


@pytest.fixture(scope="session")
def prepared_sysu(synthetic_sysu_raw, tmp_path_factory):
    """``synthetic_sysu_raw`` prepared at 64x32 (path of the prepared folder)."""
    out = tmp_path_factory.mktemp("prepared") / "sysu"
    write_prepared(plan_sysu(str(synthetic_sysu_raw)), out, PREPARED_HEIGHT, PREPARED_WIDTH, workers=2)
    return out


@pytest.fixture(scope="session")
def prepared_regdb(synthetic_regdb_raw, tmp_path_factory):
    """``synthetic_regdb_raw`` prepared at 64x32 (path of the prepared folder)."""
    out = tmp_path_factory.mktemp("prepared") / "regdb"
    write_prepared(plan_regdb(str(synthetic_regdb_raw)), out, PREPARED_HEIGHT, PREPARED_WIDTH, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_regdb(tmp_path_factory) -> Path:
    """Synthetic RegDB (16 ids, 6 images per modality) prepared at 32x16, for training runs."""
    base = tmp_path_factory.mktemp("tiny_regdb")
    write_regdb(base / "raw", ids=16, per_modality=6, height=64, width=32, seed=0)
    write_prepared(plan_regdb(str(base / "raw")), base / "prepared_32x16", 32, 16, workers=2)
    return base / "prepared_32x16"


@pytest.fixture(scope="session")
def tiny_llcm(tmp_path_factory) -> Path:
    """A synthetic raw LLCM tree (default size) prepared at 32x16 by the command-line tools."""
    base = tmp_path_factory.mktemp("tiny_llcm")
    for cmd in ([sys.executable, "-m", "rpnr.data.synthetic", "--dataset", "llcm", "--out", str(base / "raw"),
                 "--height", "64", "--width", "32"],
                [sys.executable, str(REPO / "prepare_llcm.py"), "--data-dir", str(base / "raw"), "--output-dir",
                 str(base / "prepared"), "--height", "32", "--width", "16"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr
    return base / "prepared"


@pytest.fixture(scope="session")
def train_script():
    """The top-level ``train.py`` as a module (its ``main(argv)`` returns the exit status)."""
    spec = importlib.util.spec_from_file_location("rpnr_train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread_per_module():
    """``one_thread`` for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two spinning OpenMP threads cost several times more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
