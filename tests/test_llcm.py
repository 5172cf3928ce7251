"""LLCM: preparation, the release's query/gallery order, eval_llcm, the two protocol variants and test.py.

The references are direct transcriptions of the LLCM release (ZYK100/LLCM, DEEN/data_manager.py
process_query_llcm / process_gallery_llcm, DEEN/eval_metrics.py eval_llcm, DEEN/test.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KEYS, REPO, H, W, official_checkpoint_state, official_features, random_model, run_main
from PIL import Image

from bench import official_reference as official
from rpnr import metrics
from rpnr.common.checkpoints import save_checkpoint
from rpnr.common.errors import PreparedDataError
from rpnr.data import llcm
from rpnr.data.prepare import write_prepared
from rpnr.data.prepared import ImageSet, check_prepared, load_array, load_set
from rpnr.data.registry import get_dataset
from rpnr.data.synthetic import main as synthetic_main
from rpnr.data.synthetic import write_llcm
from rpnr.engine.loop import load_train
from rpnr.engine.protocol import evaluate
from rpnr.engine.rank_lists import TrialSets, trial_sets
from rpnr.evaluation import eval_llcm

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small batches: one thread is faster
VIS_CAMS = [f"test_vis/cam{k}" for k in range(1, 10)]  # the release's camera lists
NIR_CAMS = [f"test_nir/cam{k}" for k in (1, 2, 4, 5, 6, 7, 8, 9)]


# ----------------------------------------------------------------------------- release transcriptions


def release_ids(data_path: str) -> list[str]:
    with open(os.path.join(data_path, "idx/test_id.txt")) as fh:
        return ["%04d" % int(y) for y in fh.read().splitlines()[0].split(",")]  # noqa: UP031 - official


def release_parse(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """pids and cams as the release parses them (``split('cam')``; the root holds no 'cam')."""
    return (np.array([int(p.split("cam")[1][2:6]) for p in paths]),
            np.array([int(p.split("cam")[1][0]) for p in paths]))


def release_query(data_path: str, mode: int) -> list[str]:
    """process_query_llcm: mode 1 visible, mode 2 infrared."""
    files = []
    for pid in sorted(release_ids(data_path)):
        for cam in (VIS_CAMS if mode == 1 else NIR_CAMS):
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    return files


def release_gallery(data_path: str, mode: int, trial: int) -> list[str]:
    """process_gallery_llcm: random.seed(trial), one random.choice per id and camera folder."""
    random.seed(trial)
    files = []
    for pid in sorted(release_ids(data_path)):
        for cam in (VIS_CAMS if mode == 1 else NIR_CAMS):
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files.append(random.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
    return files


def release_metrics(cmc, m_ap, m_inp) -> dict:
    at = {k: float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10, 20)}  # short curves read at their end
    return {"rank1": at[1], "rank5": at[5], "rank10": at[10], "rank20": at[20], "mAP": m_ap, "mINP": m_inp}


def release_test(model, data_path: str, trials, direction: str, swapped: bool = False) -> list[dict]:
    """DEEN/test.py's LLCM loop with our test embedding: per-trial metrics of ``direction``.

    infrared_to_visible = test_mode [1, 2]; visible_to_infrared with ``swapped`` = test_mode [2, 1]
    (sampled infrared images as queries against every visible image); without ``swapped`` every
    visible image is a query against the sampled infrared gallery.
    """
    q_mode, q_modal, g_mode, g_modal = ((1, "visible", 2, "infrared") if direction == "visible_to_infrared"
                                        else (2, "infrared", 1, "visible"))
    query = release_query(data_path, q_mode)
    q_feat = official_features(model, query, q_modal).astype(np.float64)  # the release's np.zeros((n, d)) arrays
    q_pids, q_cams = release_parse(query)
    out = []
    for trial in trials:
        gallery = release_gallery(data_path, g_mode, trial)
        g_feat = official_features(model, gallery, g_modal).astype(np.float64)
        g_pids, g_cams = release_parse(gallery)
        if swapped:
            result = official.eval_llcm_official(-np.matmul(g_feat, q_feat.T), g_pids, q_pids, g_cams, q_cams)
        else:
            result = official.eval_llcm_official(-np.matmul(q_feat, g_feat.T), q_pids, g_pids, q_cams, g_cams)
        out.append(release_metrics(*result))
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llcm_raw(tmp_path_factory) -> Path:
    """A raw LLCM tree (96x48 JPEG) under a root whose path holds '_c3_', 'vis' and 'nir'."""
    root = tmp_path_factory.mktemp("raw") / "data_c3_vis_nir" / "LLCM_c3_"
    write_llcm(root, train_ids=6, test_ids=5, per_camera=2, height=96, width=48, seed=1)
    return root


@pytest.fixture(scope="module")
def llcm_prepared(llcm_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "llcm"
    write_prepared(llcm.plan_llcm(str(llcm_raw)), out, H, W, workers=2)
    return out


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A random model saved in the RPNR release's checkpoint layout (``module.`` keys, a classifier)."""
    model = random_model(5)
    path = tmp_path_factory.mktemp("ckpt") / "official.pth"
    save_checkpoint({"state_dict": official_checkpoint_state(model), "epoch": 1}, path)
    return path, model


def run_prepare(cwd: Path, *args) -> subprocess.CompletedProcess:
    """prepare_llcm.py run in ``cwd`` (a test's temporary folder, never the checkout)."""
    return subprocess.run([sys.executable, str(REPO / "prepare_llcm.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


# ----------------------------------------------------------------------------- preparation


def test_synthetic_command_line(tmp_path, capsys):
    args = ["--dataset", "llcm", "--train-ids", "2", "--test-ids", "1", "--per-camera", "1", "--height", "32",
            "--width", "16", "--seed", "4"]
    assert synthetic_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "wrote synthetic llcm" in capsys.readouterr().out
    assert len((tmp_path / "a" / "idx" / "test_id.txt").read_text().split(",")) == 1
    labels = {line.split()[1] for line in (tmp_path / "a" / "idx" / "train_nir.txt").read_text().splitlines()}
    assert labels == {"0", "1"}  # two training ids, labelled 0 and 1
    assert synthetic_main([*args, "--out", str(tmp_path / "b")]) == 0  # deterministic given the seed
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.jpg"))
    assert (tmp_path / "a" / files[0]).read_bytes() == (tmp_path / "b" / files[0]).read_bytes()
    assert synthetic_main(["--dataset", "llcm", "--test-ids", "0", "--out", str(tmp_path / "c")]) == 1
    assert "at least one" in capsys.readouterr().err


def test_synthetic_tree_has_the_llcm_layout(llcm_raw):
    lines = (llcm_raw / "idx" / "train_vis.txt").read_text().splitlines()
    assert re.fullmatch(r"vis/(\d{4})/\1_c0\d_s\d{6}_f\d{4}_vis\.jpg \d+", lines[0])
    assert (llcm_raw / "test_nir" / "cam3").is_dir() and not any((llcm_raw / "test_nir" / "cam3").iterdir())
    assert not list(llcm_raw.glob("nir/*/*_c03_*"))
    ids = [int(i) for i in (llcm_raw / "idx" / "test_id.txt").read_text().split(",")]
    assert len(ids) == 5 and ids != sorted(ids)  # listed in a random order, as the release sorts them
    assert llcm.camera_of("0001_c01_s185535_f7010_vis.jpg") == 1 and llcm.camera_of("x_c12_y.jpg") == 12
    assert llcm.camera_of("0001.jpg") == -1


def test_prepare_llcm_cli_counts_order_and_relative_paths(llcm_raw, tmp_path):
    out = tmp_path / "llcm_32x16"
    res = run_prepare(tmp_path, "--data-dir", llcm_raw, "--output-dir", out, "--height", 32, "--width", 16,
                      "--workers", 2)
    assert res.returncode == 0, res.stderr
    assert "test (every image)  infrared" in res.stdout and "gallery (trial 0)" in res.stdout
    assert "warning: LLCM train identities: found 6, published 713" in res.stdout
    manifest = check_prepared(out, "llcm", 32, 16)
    found = manifest["published_check"]["found"]
    # the manifest records what was prepared: 6 training ids, 5 test ids, and every image count
    vis_lines = (llcm_raw / "idx" / "train_vis.txt").read_text().split("\n")[:-1]
    nir_lines = (llcm_raw / "idx" / "train_nir.txt").read_text().split("\n")[:-1]
    test_vis = sorted(llcm_raw.glob("test_vis/cam*/*/*.jpg"))
    assert found["train identities"] == [6, 6] and found["test identities"] == [5, 5]
    assert found["train visible images"] == [len(vis_lines)] * 2
    assert found["train infrared images"] == [len(nir_lines)] * 2
    assert found["test visible images"] == [len(test_vis)] * 2
    assert manifest["sets"]["test_infrared"]["count"] == len(list(llcm_raw.glob("test_nir/cam*/*/*.jpg")))

    # the idx files' images sorted by path (the RPNR framework clusters sorted(dataset.train)), memory-mapped
    rgb, ir = load_train(out, "llcm")
    assert isinstance(rgb.images, np.memmap) and rgb.images.shape == (len(vis_lines), 32, 16, 3)
    assert [line.split()[0] for line in vis_lines] != sorted(line.split()[0] for line in vis_lines)
    assert rgb.paths.tolist() == sorted(line.split()[0] for line in vis_lines)
    for image_set, lines in ((rgb, vis_lines), (ir, nir_lines)):
        listed = {path: int(label) for path, label in (line.split() for line in lines)}
        assert image_set.paths.tolist() == sorted(listed)
        np.testing.assert_array_equal(image_set.pids, [listed[p] for p in image_set.paths])  # the label column
        np.testing.assert_array_equal(image_set.cams, [int(p.split("_c")[1][:2]) for p in image_set.paths])
    assert set(np.unique(ir.cams)) <= {1, 2, 4, 5, 6, 7, 8, 9}
    ref = np.asarray(Image.open(llcm_raw / rgb.paths[-1]).convert("RGB").resize((16, 32), Image.BICUBIC))
    np.testing.assert_array_equal(rgb.images[-1], ref)  # training images: bicubic

    root = str(llcm_raw)
    for modality, mode in (("visible", 1), ("infrared", 2)):
        test = load_set(out, f"test_{modality}")
        query = release_query(root, mode)
        assert test.paths.tolist() == [os.path.relpath(p, root) for p in query]
        assert all(p.startswith(f"test_{'vis' if mode == 1 else 'nir'}/cam") for p in test.paths)
        pids, cams = release_parse(query)
        np.testing.assert_array_equal(test.pids, pids)
        np.testing.assert_array_equal(test.cams, cams)
        ref = np.asarray(Image.open(query[3]).convert("RGB").resize((16, 32), Image.LANCZOS))
        np.testing.assert_array_equal(test.images[3], ref)  # test images: Lanczos


def test_gallery_sampling_matches_the_release(llcm_raw, llcm_prepared):
    root = str(llcm_raw)
    state = random.getstate()
    for modality, mode in (("visible", 1), ("infrared", 2)):
        test = load_set(llcm_prepared, f"test_{modality}")
        for trial in (0, 1, 7, 9):
            expected = [os.path.relpath(p, root) for p in release_gallery(root, mode, trial)]
            assert llcm.gallery_split(root, modality, trial).paths == expected
            random.setstate(state)
            index = load_array(llcm_prepared, f"gallery_index_{modality}_{trial}")
            assert test.paths[index].tolist() == expected
            assert len(set(zip(test.pids[index].tolist(), test.cams[index].tolist()))) == len(index)
    random.setstate(state)
    llcm.gallery_split(root, "infrared", 3)
    assert random.getstate() == state  # the global random state is left alone
    galleries = [load_array(llcm_prepared, f"gallery_index_infrared_{t}").tolist() for t in range(10)]
    assert len({tuple(g) for g in galleries}) > 1  # the trials differ
    assert llcm.LLCM_TRIALS == tuple(range(10)) == get_dataset("llcm").trials
    with pytest.raises(PreparedDataError, match="trial must be in 0..9, got 10"):
        trial_sets("llcm", llcm_prepared, trial=10)
    with pytest.raises(PreparedDataError, match="trial must be in 0..9, got 10"):
        evaluate(random_model(0), "llcm", llcm_prepared, trials=[10], device="cpu")


# ----------------------------------------------------------------------------- eval_llcm


# gallery index:   0  1  2  3  4  5
G_PIDS = np.array([1, 2, 1, 3, 2, 4])
G_CAMS = np.array([1, 1, 2, 2, 4, 1])
Q_PIDS = np.array([1, 2, 3, 4, 1])
Q_CAMS = np.array([1, 2, 4, 1, 2])
ORDERS = [
    [0, 1, 2, 3, 4, 5],  # q0 pid 1 cam 1: gallery 0 (pid 1, cam 1) dropped
    [4, 0, 2, 1, 3, 5],  # q1 pid 2 cam 2: nothing dropped
    [0, 2, 5, 3, 1, 4],  # q2 pid 3 cam 4: nothing dropped
    [5, 0, 1, 2, 3, 4],  # q3 pid 4 cam 1: its only image (gallery 5) has its camera -> no match
    [2, 1, 0, 3, 4, 5],  # q4 pid 1 cam 2: its best match (gallery 2, camera 2) is dropped
]


def _distmat(orders, num_g) -> np.ndarray:
    dist = np.zeros((len(orders), num_g), dtype=np.float32)
    for q, order in enumerate(orders):
        dist[q, order] = np.arange(num_g, dtype=np.float32)
    return dist


def test_eval_llcm_same_identity_same_camera_rule_hand_computed():
    # q0: kept pids [2, 1, 3, 2, 4]: match at 2 -> AP 1/2, INP 1/2; distinct [2, 1, ...] -> CMC hit at rank 2
    # q1: pids [2, 1, 1, 2, 3, 4]: matches at 1 and 4 -> AP (1 + 2/4) / 2 = 0.75, INP 2/4; rank 1
    # q2: pids [1, 1, 4, 3, 2, 2]: match at 4 -> AP = INP = 1/4; distinct [1, 4, 3] -> rank 3 (standard CMC: 4)
    # q3: not valid (its CMC row of zeros is summed, the divisor counts valid queries only)
    # q4: kept pids [2, 1, 3, 2, 4]: match at 2 -> AP 1/2, INP 1/2; rank 2 (without the rule: rank 1, AP 5/6)
    # valid = 4: CMC@1..3 = [1, 3, 4] / 4; mAP = (0.5 + 0.75 + 0.25 + 0.5) / 4; mINP = (0.5 + 0.5 + 0.25 + 0.5) / 4
    dist = _distmat(ORDERS, len(G_PIDS))
    cmc, m_ap, m_inp = eval_llcm(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, [0.25, 0.75, 1.0], atol=1e-7)
    assert m_ap == pytest.approx(0.5, abs=1e-12) and m_inp == pytest.approx(0.4375, abs=1e-12)
    ref = official.eval_llcm_official(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, ref[0], atol=1e-7)
    assert (m_ap, m_inp) == pytest.approx(ref[1:], abs=1e-12)
    # the SYSU rule (camera 2 only for camera-3 queries) drops nothing here: q0, q1, q3, q4 match at rank 1
    cmc, _, _ = metrics.eval_sysu(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, [0.8, 0.8, 1.0], atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eval_llcm_equals_the_release_loop(seed, monkeypatch):
    monkeypatch.setattr(metrics, "_QUERY_CHUNK", 7)  # several chunks
    rng = np.random.default_rng(seed)
    g_pids, g_cams = rng.integers(0, 30, 90), rng.integers(1, 10, 90)
    q_pids, q_cams = rng.integers(0, 34, 40), rng.integers(1, 10, 40)  # ids 30..33 have no gallery image
    dist = np.round(rng.random((40, 90)), 1).astype(np.float32)  # many ties: the sort order must agree
    cmc, m_ap, m_inp = eval_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    ref = official.eval_llcm_official(dist, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(cmc, ref[0], atol=1e-6)
    assert cmc.dtype == np.float32 and cmc.shape == (20,)
    assert m_ap == pytest.approx(ref[1], abs=1e-12) and m_inp == pytest.approx(ref[2], abs=1e-12)


# ----------------------------------------------------------------------------- protocol and test.py


def test_test_script_llcm_both_directions_match_the_release(llcm_prepared, llcm_raw, official_checkpoint, tmp_path,
                                                            capsys):
    path, model = official_checkpoint
    status, out, err = run_main(capsys, "--dataset", "llcm", "--data-dir", llcm_prepared, "--checkpoint", path,
                                "--height", H, "--width", W, "--json", tmp_path / "llcm.json",
                                "--ranks-png", tmp_path / "ranks.png", "--ranks-queries", 3)
    assert status == 0, err
    got = json.loads((tmp_path / "llcm.json").read_text())
    assert set(got) == {"visible_to_infrared", "infrared_to_visible", "checkpoint"}
    assert got["checkpoint"]["path"] == str(path)
    assert got["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    lines = out.splitlines()
    assert sum(line.startswith("Trial ") for line in lines) == 20
    assert "Mean of 10 trials Infrared to Visible: Rank-1: " in out and (tmp_path / "ranks.png").is_file()
    status, _, err = run_main(capsys, "--dataset", "sysu", "--data-dir", llcm_prepared, "--checkpoint", path,
                              "--v2i-sampled-infrared-queries")
    assert status == 1 and err.strip() == ("test.py: error: --v2i-sampled-infrared-queries applies to "
                                           "--dataset llcm only")
    for direction in ("visible_to_infrared", "infrared_to_visible"):
        trials = got[direction].pop("per_trial")  # each trial's metrics, whose mean the others are
        assert set(got[direction]) == set(KEYS) and [t["trial"] for t in trials] == list(range(10))
        assert all(abs(np.mean([t[k] for t in trials]) - got[direction][k]) < 1e-6 for k in KEYS)
        assert all(0.0 <= v <= 100.0 for v in got[direction].values())
        assert got[direction]["rank1"] <= got[direction]["rank5"] <= got[direction]["rank20"]
        want = release_test(model, str(llcm_raw), range(10), direction)
        for k in KEYS:
            assert abs(got[direction][k] - 100.0 * np.mean([w[k] for w in want])) < 1e-3, (direction, k)
    assert 0.0 < got["visible_to_infrared"]["mAP"] < 100.0


def test_v2i_sampled_infrared_queries_is_the_release_test_mode_2_1(llcm_prepared, llcm_raw, official_checkpoint,
                                                                   tmp_path, capsys):
    path, model = official_checkpoint
    ds = get_dataset("llcm")
    variant = ds.variants["v2i_sampled_infrared_queries"]
    assert variant.name == "visible_to_infrared"  # it replaces the plain setting of that name
    swapped = evaluate(model, "llcm", llcm_prepared, [variant], trials=[4, 0], device="cpu",
                       batch_size=16)["visible_to_infrared"]
    plain = evaluate(model, "llcm", llcm_prepared, ["visible_to_infrared"], trials=[4, 0], device="cpu",
                     batch_size=16)["visible_to_infrared"]
    assert [r["trial"] for r in swapped["per_trial"]] == [4, 0]
    for result, flag in ((swapped, True), (plain, False)):
        want = release_test(model, str(llcm_raw), [4, 0], "visible_to_infrared", swapped=flag)
        for got, ref in zip(result["per_trial"], want):
            for k in KEYS:
                assert abs(got[k] - ref[k]) < 1e-5, (flag, k)
    assert swapped["mAP"] != pytest.approx(plain["mAP"])  # the variants really differ
    both = evaluate(model, "llcm", llcm_prepared, trials=[4, 0], device="cpu", batch_size=16)
    assert list(both) == ["visible_to_infrared", "infrared_to_visible"]  # default: every setting of the dataset
    assert both["visible_to_infrared"]["mAP"] == pytest.approx(plain["mAP"], abs=1e-6)
    with pytest.raises(ValueError, match="LLCM has no test setting 'visible_to_thermal'"):
        evaluate(model, "llcm", llcm_prepared, ["visible_to_thermal"], trials=[0])
    # test.py's flag swaps that setting only
    status, out, err = run_main(capsys, "--dataset", "llcm", "--data-dir", llcm_prepared, "--checkpoint", path,
                                "--trials", 1, "--v2i-sampled-infrared-queries", "--json", tmp_path / "v2i.json")
    assert status == 0, err
    assert "Mean of 1 trials Visible to Infrared (sampled infrared queries): Rank-1: " in out
    got = json.loads((tmp_path / "v2i.json").read_text())
    want = release_test(model, str(llcm_raw), [0], "visible_to_infrared", swapped=True)[0]
    i2v = release_test(model, str(llcm_raw), [0], "infrared_to_visible")[0]
    for k in KEYS:
        assert abs(got["visible_to_infrared"][k] - 100.0 * want[k]) < 1e-3, k
        assert abs(got["infrared_to_visible"][k] - 100.0 * i2v[k]) < 1e-3, k


def test_rank_list_tables_cover_llcm(llcm_prepared):
    assert get_dataset("llcm").epoch_trial(5) == 0
    sets = trial_sets("llcm", llcm_prepared)
    assert sets.title == "LLCM visible to infrared, gallery of trial 0"
    assert (sets.setting.query.modal, sets.setting.gallery.modal) == ("visible", "infrared")
    np.testing.assert_array_equal(sets.gallery.paths, load_set(llcm_prepared, "test_infrared").paths[
        load_array(llcm_prepared, "gallery_index_infrared_0")])
    np.testing.assert_array_equal(sets.query.paths, load_set(llcm_prepared, "test_visible").paths)

    def images(pids, cams):
        return ImageSet(np.zeros((len(pids), 1, 1, 3), np.uint8), np.array(pids), np.array(cams),
                        np.array([f"x{i}" for i in range(len(pids))]))

    # the LLCM rule: a gallery image of the query's identity AND camera is ignored
    hand = TrialSets(images([7, 7], [1, 2]), images([7, 8, 7], [1, 1, 2]), sets.setting, "hand")
    np.testing.assert_array_equal(hand.excluded(hand.query), [[True, False, False], [False, False, True]])
    mask = sets.excluded(sets.query)
    assert mask.shape == (len(sets.query), len(sets.gallery))
    np.testing.assert_array_equal(mask, (sets.query.pids[:, None] == sets.gallery.pids[None])
                                  & (sets.query.cams[:, None] == sets.gallery.cams[None]))
    assert mask.any() and not mask.all()


# ----------------------------------------------------------------------------- bad input


def _bad_tree(kind: str, raw: Path, tmp: Path) -> tuple[Path, str]:
    root = tmp / "raw"
    if kind == "missing folder":
        return tmp / "no_such_dir", "LLCM folder not found"
    shutil.copytree(raw, root)
    if kind == "missing test_id":
        (root / "idx" / "test_id.txt").unlink()
        return root, "missing " + str(root / "idx" / "test_id.txt")
    if kind == "missing train list":
        (root / "idx" / "train_nir.txt").unlink()
        return root, "missing " + str(root / "idx" / "train_nir.txt")
    if kind == "missing test folder":
        shutil.rmtree(root / "test_vis")
        return root, "missing folder " + str(root / "test_vis")
    if kind == "test id without images":
        line = (root / "idx" / "test_id.txt").read_text().strip()
        (root / "idx" / "test_id.txt").write_text(line + ",987\n")
        return root, "test id 987 of idx/test_id.txt has no images"
    if kind == "unreadable test image":
        victim = sorted(root.glob("test_nir/cam*/*/*.jpg"))[0]
        victim.write_bytes(b"not an image")
        return root, f"cannot read image {victim}"
    if kind == "unreadable training image":
        victim = sorted(root.glob("vis/*/*.jpg"))[-1]
        victim.write_bytes(b"")
        return root, f"cannot read image {victim}"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing folder", "missing test_id", "missing train list", "missing test folder",
                                  "test id without images", "unreadable test image", "unreadable training image"])
def test_bad_input_is_one_line_and_leaves_nothing(kind, llcm_raw, tmp_path):
    root, message = _bad_tree(kind, llcm_raw, tmp_path)
    out = tmp_path / "out" / "prepared"
    res = run_prepare(tmp_path, "--data-dir", root, "--output-dir", out, "--height", 32, "--width", 16)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("prepare_llcm.py: error: ") and message in lines[0], lines[0]
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
