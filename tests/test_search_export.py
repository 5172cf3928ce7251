"""search.py, export.py (ONNX) and python -m rpnr.tools.tsne on a random model and synthetic RegDB images."""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, random_model
from PIL import Image

from rpnr.common.checkpoints import save_checkpoint
from rpnr.data.prepared import load_set
from rpnr.engine.rank_lists import OTHER, SAME, trial_sets
from rpnr.tools import tsne
from rpnr.tools.extractor import FeatureExtractor

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small batches: one thread is faster


def _script(name: str):
    """A top-level script as a module (its ``main(argv)`` returns the exit status)."""
    spec = importlib.util.spec_from_file_location(f"rpnr_{name}_script", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tiny_regdb, tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "model_best.pth.tar"
    save_checkpoint({"model": random_model(7).state_dict(), "dataset": "regdb", "stage": "baseline",
                     "args": {"height": 32, "width": 16, "dataset": "regdb", "stage": "baseline", "trial": 1}}, path)
    return path


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return FeatureExtractor(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(tiny_regdb, tmp_path_factory) -> Path:
    """query/<id>/: 3 thermal images and a text file; gallery/<id>/: 7 visible images, one of them twice
    (gallery/1/v_0001_01.bmp and its copy gallery/1/v_0001_01_copy.bmp, a tie); query.txt lists the queries."""
    raw, base = tiny_regdb.parent / "raw", tmp_path_factory.mktemp("images")
    for side, prepared, rows in (("query", "thermal_test", [0, 6, 13]), ("gallery", "visible_test", range(0, 42, 6))):
        for rel in load_set(tiny_regdb, prepared).paths[list(rows)]:
            (base / side / Path(rel).parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(raw / rel, base / side / Path(rel).parent.name / Path(rel).name)
    first = sorted((base / "gallery").rglob("*.bmp"))[0]
    shutil.copy(first, first.with_name(first.stem + "_copy.bmp"))
    (base / "query" / "notes.txt").write_text("not an image")
    listed = sorted((base / "query").rglob("*.bmp"))
    (base / "query.txt").write_text("".join(f"{p.relative_to(base)}\n" for p in listed))
    return base


def _search(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    status = _script("search").main(["--device", "cpu", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_search_ranks_by_cosine_similarity(capsys, checkpoint, extractor, images, tmp_path):
    status, out, err = _search(capsys, "--checkpoint", checkpoint, "--query", images / "query", "--gallery",
                               images / "gallery", "--query-modality", "thermal", "--gallery-modality", "visible",
                               "--top-k", 4, "--out", tmp_path / "out")
    assert status == 0, err
    assert f"skipped: {images / 'query' / 'notes.txt'} (not an image)" in out.splitlines()
    queries, gallery = sorted((images / "query").rglob("*.bmp")), sorted((images / "gallery").rglob("*.bmp"))
    sim = (extractor(queries, "infrared") @ extractor(gallery, "visible").T).numpy()  # [3, 8]
    with open(tmp_path / "out" / "ranks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["query"], int(r["rank"])) for r in rows] == [(str(q), k) for q in queries for k in range(1, 5)]
    for r in rows:
        q, g = queries.index(Path(r["query"])), gallery.index(Path(r["gallery"]))
        assert abs(float(r["similarity"]) - sim[q, g]) <= 1e-5
        if r["rank"] == "1":
            assert g == int(np.argmax(sim[q]))  # argmax: the first of equal maxima
    for q in range(len(queries)):
        ranked = [float(r["similarity"]) for r in rows if r["query"] == str(queries[q])]
        assert ranked == sorted(ranked, reverse=True)
    picture = np.array(Image.open(tmp_path / "out" / "ranks.png").convert("RGB"))
    assert not any((picture == color).all(-1).any() for color in (SAME, OTHER))  # no ground truth: no verdicts


def test_search_from_a_list_file_with_identities_from_folders(capsys, images, checkpoint, tmp_path):
    status, _, err = _search(capsys, "--checkpoint", checkpoint, "--query", images / "query.txt", "--gallery",
                             images / "gallery", "--query-modality", "NIR", "--gallery-modality", "visible",
                             "--ids-from-folders", "--out", tmp_path)
    assert status == 0, err
    with open(tmp_path / "ranks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 8  # --top-k 10 > 8 gallery images: all of them
    original = sorted((images / "gallery").rglob("*.bmp"))[0]
    for query in {r["query"] for r in rows}:  # the copy ties with the original and follows it (gallery order)
        ranked = [r for r in rows if r["query"] == query]
        at = [r["gallery"] for r in ranked].index(str(original))
        assert ranked[at + 1]["gallery"] == str(original.with_name(original.stem + "_copy.bmp"))
        assert ranked[at + 1]["similarity"] == ranked[at]["similarity"]
    picture = np.array(Image.open(tmp_path / "ranks.png").convert("RGB"))
    assert all((picture == color).all(-1).any() for color in (SAME, OTHER))


def test_search_refuses_bad_checkpoints_and_empty_folders(capsys, images, checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("a text file")
    save_checkpoint({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    (tmp_path / "empty").mkdir()
    cases = {"notes.txt": r"damaged checkpoint \S+notes\.txt: not a PyTorch checkpoint",
             "other.pth": r"\S+other\.pth does not fit the AGW model", "missing.pth": r"checkpoint not found"}
    for name, reason in cases.items():
        status, out, err = _search(capsys, "--checkpoint", tmp_path / name, "--query", images / "query", "--gallery",
                                   images / "gallery", "--query-modality", "thermal", "--gallery-modality",
                                   "visible", "--out", tmp_path / "out")
        assert status == 1 and re.fullmatch(rf"search\.py: error: {reason}[^\n]*\n", err), err
    status, _, err = _search(capsys, "--checkpoint", checkpoint, "--query", tmp_path / "empty", "--gallery",
                             images / "gallery", "--query-modality", "thermal", "--gallery-modality", "visible",
                             "--out", tmp_path / "out")
    assert status == 1 and re.fullmatch(r"search\.py: error: no images in \S+empty [^\n]*\n", err), err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """export.py's visible stream of ``checkpoint``: (the ONNX file, what export.py printed)."""
    path = tmp_path_factory.mktemp("onnx") / "visible.onnx"
    with pytest.MonkeyPatch.context() as patch:
        printed = []
        patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        assert _script("export").main(["--checkpoint", str(checkpoint), "--modality", "visible", "--onnx",
                                       str(path)]) == 0, printed
    return path, "\n".join(printed)


def test_onnx_export_matches_pytorch_at_two_batch_sizes(exported, extractor):
    import onnxruntime

    path, printed = exported
    worst = float(re.search(r"largest difference (\S+)", printed).group(1))
    assert worst <= 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,), (output,) = session.get_inputs(), session.get_outputs()
    assert given.type == "tensor(uint8)" and not isinstance(given.shape[0], int) and given.shape[1:] == [32, 16, 3]
    rng = np.random.default_rng(1)
    for n in (1, 5):
        batch = rng.integers(0, 256, (n, 32, 16, 3), dtype=np.uint8)
        got = session.run([output.name], {given.name: batch})[0]
        assert got.shape == (n, 2048) and np.abs(got - extractor(list(batch), "visible").numpy()).max() <= 1e-4


def test_tsne_draws_the_first_identities_of_a_trial(capsys, checkpoint, tiny_regdb, tmp_path):
    status = tsne.main(["--checkpoint", str(checkpoint), "--dataset", "regdb", "--data-dir", str(tiny_regdb),
                        "--ids", "3", "--device", "cpu", "--out", str(tmp_path / "tsne.png")])
    out = capsys.readouterr().out
    sets = trial_sets("regdb", tiny_regdb, 1, "visible_to_thermal")
    ids = np.unique(sets.query.pids)[:3]
    counts = [int(np.isin(s.pids, ids).sum()) for s in (sets.query, sets.gallery)]
    assert status == 0
    assert f"drew {sum(counts)} images ({counts[0]} visible, {counts[1]} infrared) of 3 identities" in out
    assert Image.open(tmp_path / "tsne.png").format == "PNG"
