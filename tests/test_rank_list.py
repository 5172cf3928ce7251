"""Rank lists: query choice, top-k with SYSU's camera rule, the drawing, and test.py --ranks-png."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_test_script
from PIL import Image

from rpnr.common.checkpoints import save_checkpoint
from rpnr.data.prepared import ImageSet, Side, load_array, load_set, load_side
from rpnr.data.registry import get_dataset
from rpnr.engine.rank_lists import (
    BORDER,
    EMPTY,
    OTHER,
    QUERY,
    SAME,
    RankList,
    compute_rank_list,
    draw_rank_list,
    layout,
    spread_queries,
    top_matches,
    trial_sets,
    write_rank_list,
)
from rpnr.evaluation import extract_features_uint8
from rpnr.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small batches: one thread is faster


def _regdb_test(root: Path, modality: str, trial: int) -> ImageSet:
    """The RegDB test images of ``modality`` listed for ``trial`` (idx-file order and labels), read through
    an explicit side rather than the registry's settings."""
    arrays = f"trial{{trial}}_test_{modality}"
    side = Side(f"{modality}_test", "visible" if modality == "visible" else "infrared", index=f"{arrays}_index",
                labels=f"{arrays}_labels")
    return load_side(root, side, trial)


def _cams(cams: list[int]) -> ImageSet:
    """An image set of 1x1 images that only its cameras tell apart (identity 0 throughout)."""
    n = len(cams)
    return ImageSet(images=np.zeros((n, 1, 1, 3), dtype=np.uint8), pids=np.zeros(n, dtype=np.int64),
                    cams=np.array(cams, dtype=np.int64), paths=np.array([f"{i}.jpg" for i in range(n)]))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return build_model().eval()


def test_spread_queries_takes_distinct_identities_evenly_then_fills():
    pids = np.array([5, 5, 3, 3, 9, 9, 1, 7])  # sorted identities 1, 3, 5, 7, 9
    np.testing.assert_array_equal(spread_queries(pids, 3), [6, 0, 4])  # ids 1, 5, 9: first image of each
    np.testing.assert_array_equal(spread_queries(pids, 5), [6, 2, 0, 7, 4])
    # more queries than identities: the other images, evenly spaced (rows 1, 3, 5 remain)
    np.testing.assert_array_equal(spread_queries(pids, 7), [6, 2, 0, 7, 4, 1, 5])
    assert len(spread_queries(pids, 50)) == 8
    with pytest.raises(ValueError, match="must be positive"):
        spread_queries(pids, 0)


def test_top_matches_order_ties_exclusions_and_short_galleries():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    g = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    excluded = np.zeros((2, 5), dtype=bool)
    excluded[1, 2] = True  # query 1's best match is skipped
    index, sim = top_matches(q, g, excluded, top_k=3)
    np.testing.assert_array_equal(index, [[1, 3, 0], [0, 4, 3]])  # ties (rows 0 and 4): lower row first
    np.testing.assert_allclose(sim, [[1.0, 0.8, 0.6], [0.8, 0.8, 0.6]], atol=1e-6)
    excluded[1] = [True, False, True, True, True]
    index, sim = top_matches(q, g, excluded, top_k=7)  # more than the gallery: missing entries -1 / nan
    assert index.shape == (2, 7)
    np.testing.assert_array_equal(index, [[1, 3, 0, 4, 2, -1, -1], [1, -1, -1, -1, -1, -1, -1]])
    assert sim[1, 0] == 0.0 and np.isnan(sim[1, 1:]).all() and np.isnan(sim[0, 5:]).all()


def test_sysu_trial_sets_skip_camera_2_for_camera_3_queries(prepared_sysu):
    sets = trial_sets("sysu", prepared_sysu, 4, "all")
    np.testing.assert_array_equal(sets.gallery.paths,
                                  load_set(prepared_sysu, "gallery").paths[load_array(prepared_sysu,
                                                                                      "gallery_index_all_4")])
    toy = dataclasses.replace(sets, gallery=_cams([1, 2, 4, 2, 5]))
    mask = toy.excluded(_cams([3, 6]))
    np.testing.assert_array_equal(mask, [[False, True, False, True, False], [False] * 5])
    # the real query and gallery of the trial: camera-3 queries skip exactly the camera-2 gallery images
    rows = np.concatenate([np.flatnonzero(sets.query.cams == 3)[:2], np.flatnonzero(sets.query.cams == 6)[:2]])
    assert len(rows) == 4 and (sets.gallery.cams == 2).any()
    mask = sets.excluded(sets.query.subset(rows))
    assert mask.shape == (4, len(sets.gallery))
    camera_2, none = sets.gallery.cams == 2, np.zeros(len(sets.gallery), dtype=bool)
    np.testing.assert_array_equal(mask, np.stack([camera_2, camera_2, none, none]))
    assert trial_sets("sysu", prepared_sysu).title == "SYSU-MM01 all-search, gallery of trial 0"  # first trial


def test_epoch_test_trial():
    assert get_dataset("sysu").epoch_trial(7) == 0 and get_dataset("regdb").epoch_trial(7) == 7
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("market").epoch_trial(1)


def test_regdb_trial_sets_default_to_trial_1_visible_to_thermal(prepared_regdb):
    sets = trial_sets("regdb", prepared_regdb)
    assert sets.title == "RegDB visible to thermal, trial 1"
    assert (sets.setting.query.modal, sets.setting.gallery.modal) == ("visible", "infrared")
    np.testing.assert_array_equal(sets.query.paths, _regdb_test(prepared_regdb, "visible", 1).paths)
    np.testing.assert_array_equal(sets.gallery.paths, _regdb_test(prepared_regdb, "thermal", 1).paths)
    mask = sets.excluded(sets.query)
    assert mask.shape == (len(sets.query), len(sets.gallery)) and not mask.any()


def _reference_ranks(model, root: Path, rows: np.ndarray, k: int) -> list[list[int]]:
    """Top-k gallery rows of SYSU trial 0 computed from scratch: every query embedded, cam-3 queries
    without cam-2 gallery images, stable descending similarity."""
    query, gallery = load_set(root, "query"), load_set(root, "gallery")
    index = load_array(root, "gallery_index_all_0")
    q = extract_features_uint8(model, query.images, "infrared", batch_size=16, device="cpu").numpy()
    g = extract_features_uint8(model, gallery.images[index], "visible", batch_size=16, device="cpu").numpy()
    out = []
    for r in rows:
        sims = q[r] @ g.T
        allowed = [j for j in np.argsort(-sims, kind="stable")
                   if not (query.cams[r] == 3 and gallery.cams[index[j]] == 2)]
        out.append(allowed[:k])
    return out


def test_sysu_rank_list_matches_a_direct_computation(model, prepared_sysu):
    ranks = compute_rank_list(model, "sysu", prepared_sysu, num_queries=8, device="cpu", batch_size=16)
    query = load_set(prepared_sysu, "query")
    rows = spread_queries(query.pids, 8)
    n_ids = len(np.unique(query.pids))
    assert n_ids == 6 and len(np.unique(ranks.query_pids[:n_ids])) == n_ids  # spread over identities
    assert ranks.index.shape == (8, 10) and ranks.gallery_images.shape == (8, 10, 64, 32, 3)
    assert ranks.title == "SYSU-MM01 all-search, gallery of trial 0"
    assert ranks.gallery_size == 21  # 6 identities x 4 visible cameras, 3 of them absent
    np.testing.assert_array_equal(ranks.query_pids, query.pids[rows])
    np.testing.assert_array_equal(ranks.query_images, query.images[rows])
    want = _reference_ranks(model, Path(prepared_sysu), rows, 10)
    np.testing.assert_array_equal(ranks.index, want)
    gallery = load_set(prepared_sysu, "gallery")
    index = load_array(prepared_sysu, "gallery_index_all_0")
    np.testing.assert_array_equal(ranks.gallery_pids, gallery.pids[index][ranks.index])
    np.testing.assert_array_equal(ranks.gallery_images[2, 3], gallery.images[index[ranks.index[2, 3]]])
    assert (np.diff(ranks.similarity, axis=1) <= 1e-7).all()
    assert ranks.matches.sum() == (ranks.gallery_pids == ranks.query_pids[:, None]).sum() > 0


def test_regdb_rank_list_is_visible_to_thermal_of_the_trial(model, prepared_regdb):
    ranks = compute_rank_list(model, "regdb", prepared_regdb, trial=2, num_queries=4, top_k=5, device="cpu")
    visible = _regdb_test(prepared_regdb, "visible", 2)
    thermal = _regdb_test(prepared_regdb, "thermal", 2)
    rows = spread_queries(visible.pids, 4)
    np.testing.assert_array_equal(ranks.query_images, visible.images[rows])
    q = extract_features_uint8(model, visible.images[rows], "visible", device="cpu").numpy()
    g = extract_features_uint8(model, thermal.images, "infrared", device="cpu").numpy()
    np.testing.assert_array_equal(ranks.index, np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(ranks.similarity[:, 0], (q @ g.T).max(1), atol=1e-6)
    assert ranks.title == "RegDB visible to thermal, trial 2" and ranks.gallery_size == len(thermal) == 24


def _toy_ranks() -> RankList:
    """Two queries, three slots: constant-colour 8x4 images, one missing entry."""
    def image(value):
        return np.full((8, 4, 3), value, dtype=np.uint8)

    gallery = np.stack([np.stack([image(10), image(20), image(30)]), np.stack([image(40), image(50), image(0)])])
    return RankList(title="toy", query_images=np.stack([image(200), image(220)]), query_pids=np.array([1, 2]),
                    query_cams=np.array([3, 6]), gallery_images=gallery,
                    gallery_pids=np.array([[1, 2, 1], [3, 2, -1]]), index=np.array([[4, 0, 2], [1, 3, -1]]),
                    similarity=np.array([[0.9, 0.5, 0.25], [0.8, 0.7, np.nan]], dtype=np.float32),
                    gallery_size=5)


def test_drawing_frames_and_scales(tmp_path):
    ranks = _toy_ranks()
    path = tmp_path / "sub" / "toy.png"
    draw_rank_list(ranks, path)
    picture = np.asarray(Image.open(path).convert("RGB"))
    grid = layout(ranks)
    assert grid.image_size == (128, 64)  # 8x4 images scaled by 16 to reach 128 pixels
    assert picture.shape == (grid.height, grid.width, 3)
    want = {(0, 0): QUERY, (0, 1): SAME, (0, 2): OTHER, (0, 3): SAME,
            (1, 0): QUERY, (1, 1): OTHER, (1, 2): SAME, (1, 3): EMPTY}
    for (row, col), color in want.items():
        x0, y0, x1, y1 = grid.frame_box(row, col)
        assert tuple(picture[y0, x0]) == color and tuple(picture[y1, x1]) == color, (row, col)
        assert tuple(picture[(y0 + y1) // 2, x0 + BORDER - 1]) == color
    x0, y0, x1, y1 = grid.frame_box(1, 2)  # inside the frame: the gallery image (value 50), scaled up
    inner = picture[y0 + BORDER:y1 - BORDER + 1, x0 + BORDER:x1 - BORDER + 1]
    assert inner.shape == (128, 64, 3) and (inner == 50).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.png"]  # no temporary file left


def test_write_rank_list_png_size(model, prepared_sysu, tmp_path):
    path = tmp_path / "ranks.png"
    write_rank_list(model, "sysu", prepared_sysu, path, num_queries=5, device="cpu", batch_size=16)
    width, height = Image.open(path).size
    assert width >= 11 * 64 and height >= 5 * 128  # query + 10 matches per row, 64x32 drawn at 128x64


def test_test_script_writes_rank_lists(model, prepared_sysu, prepared_regdb, tmp_path, capsys):
    script = load_test_script()
    ckpt = tmp_path / "model_1.pth"
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, ckpt)
    png = tmp_path / "sysu.png"
    status = script.main(["--device", "cpu", "--dataset", "sysu", "--data-dir", str(prepared_sysu), "--checkpoint",
                          str(ckpt), "--trials", "1", "--ranks-png", str(png)])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert f"wrote rank list {png}" in out.out
    width, height = Image.open(png).size
    assert width >= 10 * 64 and height >= 8 * 128  # default: 8 queries

    png = tmp_path / "regdb.png"
    status = script.main(["--device", "cpu", "--dataset", "regdb", "--data-dir", str(prepared_regdb),
                          "--checkpoint", str(tmp_path / "model_{trial}.pth"), "--trials", "1", "--ranks-png",
                          str(png), "--ranks-queries", "3"])
    assert status == 0, capsys.readouterr().err
    ranks = compute_rank_list(model, "regdb", prepared_regdb, num_queries=3, device="cpu")
    assert Image.open(png).size == (layout(ranks).width, layout(ranks).height)

    status = script.main(["--device", "cpu", "--dataset", "sysu", "--data-dir", str(prepared_sysu), "--checkpoint",
                          str(ckpt), "--ranks-png", str(png), "--ranks-queries", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err == ["test.py: error: --ranks-queries must be a positive integer, got 0"]
