"""Fidelity of the fast package code against the loop transcription of the official release.

bench/official_reference.py is the yardstick: Jaccard distance, DBSCAN, centres, NPC, OTPM, hybrid
centres, the evaluation protocols and the NRL loss must equal it on small clustered synthetic features.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bench import official_reference as ref
from bench.bench_pseudo_labels import canonical_labels, synthetic_reid_features
from rpnr import evaluation as ev
from rpnr import losses
from rpnr import matching as mt
from rpnr import pseudo_labels as pl

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

SEEDS = (0, 1, 2)
KS = ((30, 6), (10, 3))


@functools.cache
def features(seed: int) -> torch.Tensor:
    """300-400 clustered features [N, 64] with norms < 1 (flip averages), 15-20 identities + outliers."""
    n, ids = (300, 15) if seed < 2 else (400, 20)
    feats, _ = synthetic_reid_features(n, 64, num_ids=ids, seed=seed, tightness=(0.3, 1.6))
    return feats


@functools.cache
def ref_jaccard(seed: int, k1: int, k2: int) -> np.ndarray:
    return ref.jaccard_official(features(seed), k1=k1, k2=k2)


@functools.cache
def ref_labels(seed: int, k1: int, k2: int, eps: float) -> np.ndarray:
    return ref.dbscan_official(ref_jaccard(seed, k1, k2), eps)


def test_synthetic_features_are_flip_averages():
    feats = features(0)
    norms = feats.norm(dim=1)
    assert feats.shape == (300, 64)
    assert 0.9 < float(norms.min()) and float(norms.max()) < 1.0
    labels = ref_labels(0, 30, 6, 0.6)
    assert 8 <= labels.max() + 1 <= 30 and 0 < (labels == -1).sum() < 100


def test_canonical_labels():
    np.testing.assert_array_equal(canonical_labels(np.array([5, -1, 2, 5, 0, 2])), [0, -1, 1, 0, 2, 1])


@pytest.mark.parametrize("k1,k2", KS)
@pytest.mark.parametrize("seed", SEEDS)
def test_jaccard_distance_matches_reference(seed, k1, k2):
    expected = ref_jaccard(seed, k1, k2)
    got = pl.jaccard_distance(features(seed), k1=k1, k2=k2)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5
    assert (expected < 1).sum() > 10 * len(expected)  # non-trivial neighbourhoods


def test_knn_orders_exact_ties_by_index(monkeypatch):
    """Exact distance ties (duplicated images) go to the lower index, across block borders."""
    monkeypatch.setattr(pl, "_KNN_BLOCK", 64)  # several blocks, so ties meet in the merge
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (300, 8), generator=g).float()  # integer data: exact distances
    x = torch.cat([x, x[:50]])  # rows 300..349 duplicate rows 0..49
    got = pl.knn(x, 30).numpy()
    d = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()  # [350, 350]
    expected = np.stack([np.lexsort((np.arange(len(d)), row))[:30] for row in d])
    np.testing.assert_array_equal(got, expected)
    assert (got[:50, :2] == np.stack([np.arange(50), np.arange(300, 350)], 1)).all()


def test_jaccard_distance_with_duplicated_rows_matches_reference():
    feats = torch.cat([features(0), features(0)[:60]])  # 60 images present twice
    expected = ref.jaccard_official(feats)
    got = pl.jaccard_distance(feats)
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize("eps", (0.6, 0.3))
@pytest.mark.parametrize("seed", SEEDS)
def test_dbscan_partition_matches_reference(seed, eps):
    dist = ref_jaccard(seed, 30, 6)
    expected = ref.dbscan_official(dist, eps)
    got = pl.dbscan(dist, eps)
    np.testing.assert_array_equal(canonical_labels(got), canonical_labels(expected))
    # the full API chain equals the full reference chain
    chain = pl.dbscan(pl.jaccard_distance(features(seed)), eps)
    np.testing.assert_array_equal(canonical_labels(chain), canonical_labels(expected))


@pytest.mark.parametrize("k1,k2", KS)
@pytest.mark.parametrize("seed", SEEDS)
def test_cluster_features_equals_jaccard_plus_dbscan(seed, k1, k2):
    for eps in (0.6, 0.45):
        expected = ref_labels(seed, k1, k2, eps)
        got = pl.cluster_features(features(seed), eps, k1=k1, k2=k2)
        np.testing.assert_array_equal(canonical_labels(got), canonical_labels(expected))


@pytest.mark.parametrize("seed", SEEDS)
def test_cluster_centers_match_reference(seed):
    labels = ref_labels(seed, 30, 6, 0.6)
    expected = ref.centers_official(features(seed), labels)
    got = pl.cluster_centers(features(seed), labels)
    assert got.shape == expected.shape == (labels.max() + 1, 64)
    assert float((got.cpu() - expected).abs().max()) < 1e-6


def _noisy_labels(seed: int) -> np.ndarray:
    """DBSCAN labels with two clusters merged and some members moved, so NPC has work to do."""
    labels = ref_labels(seed, 30, 6, 0.6).copy()
    rng = np.random.default_rng(seed)
    labels[labels == labels.max()] = 0  # merge the last cluster into cluster 0
    inliers = np.where(labels != -1)[0]
    moved = rng.choice(inliers, size=len(inliers) // 10, replace=False)
    labels[moved] = rng.integers(0, labels.max() + 1, len(moved))
    return canonical_labels(labels)


@pytest.mark.parametrize("top_k", (20, 5))
@pytest.mark.parametrize("seed", SEEDS)
def test_calibrate_labels_match_reference(seed, top_k):
    for labels in (ref_labels(seed, 30, 6, 0.6), _noisy_labels(seed)):
        before = labels.copy()
        expected = ref.calibrate_official(features(seed), labels, top_k=top_k)
        got = pl.calibrate_labels(features(seed), labels, top_k=top_k)
        np.testing.assert_array_equal(np.asarray(got), expected)
        np.testing.assert_array_equal(labels, before)  # input untouched
    assert (expected != labels).sum() > 5  # the noisy case really relabels samples
    got_p = pl.npc_prototypes(features(seed), labels, top_k=top_k)
    exp_p = ref.npc_prototypes_official(features(seed), labels, top_k=top_k)
    assert float((got_p.cpu() - exp_p).abs().max()) < 1e-6


def _centers(k: int, seed: int, d: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g) * 0.3 + torch.randn(1, d, generator=g)  # [k, d]


@pytest.mark.parametrize("k_rgb,k_ir", ((12, 15), (3, 7), (7, 3), (40, 40)))
def test_match_clusters_matches_reference(k_rgb, k_ir):
    c_rgb, c_ir = _centers(k_rgb, 0), _centers(k_ir, 1)
    r2i, i2r = mt.match_clusters(c_rgb, c_ir)
    exp_r2i, exp_i2r = ref.match_official(c_rgb, c_ir)
    np.testing.assert_array_equal(r2i, exp_r2i)
    np.testing.assert_array_equal(i2r, exp_i2r)
    assert r2i.shape == (k_rgb,) and i2r.shape == (k_ir,)
    assert r2i.max() < k_ir and i2r.max() < k_rgb
    plan = ref.sinkhorn_plan_official(c_rgb, c_ir)  # converged to 1e-9
    np.testing.assert_allclose(plan.sum(1), np.full(k_rgb, 1 / k_rgb), rtol=1e-6)
    np.testing.assert_allclose(plan.sum(0), np.full(k_ir, 1 / k_ir), rtol=1e-6)
    # the package stops at POT's stopThr 1e-5 (as the release): the plans agree to 1e-4 relative
    np.testing.assert_allclose(mt.transport_plan(c_rgb, c_ir), plan, rtol=1e-4, atol=0)
    # at the release's reg 5 the plan is close to uniform (max / min 1.005-1.02 here); at reg 0.1 it is not
    sharp = ref.sinkhorn_plan_official(c_rgb, c_ir, reg=0.1)
    assert sharp.max() / sharp.min() > 1.2
    np.testing.assert_allclose(mt.transport_plan(c_rgb, c_ir, reg=0.1), sharp, rtol=1e-4, atol=0)
    r2i, i2r = mt.match_clusters(c_rgb, c_ir, reg=0.1)
    np.testing.assert_array_equal(r2i, sharp.argmax(1))
    np.testing.assert_array_equal(i2r, sharp.argmax(0))


def test_hybrid_centers_match_reference():
    c_rgb, c_ir = _centers(9, 2), _centers(11, 3)
    _, i2r = ref.match_official(c_rgb, c_ir)
    calibrated = np.array([0, 1, 1, 3, -1, 5, 6, 6, 8, 10, -1])  # clusters 2, 4, 7, 9 left empty
    expected = ref.hybrid_official(c_rgb, c_ir, i2r, calibrated)
    present = np.zeros(11, dtype=bool)
    present[calibrated[calibrated >= 0]] = True
    got = mt.hybrid_centers(c_rgb, c_ir, i2r, present)
    assert float((got - expected).abs().max()) < 1e-6
    assert float(got[[2, 4, 7, 9]].abs().max()) == 0.0
    full = mt.hybrid_centers(c_rgb, c_ir, i2r)
    expected_full = ref.hybrid_official(c_rgb, c_ir, i2r, np.arange(11))
    assert float((full - expected_full).abs().max()) < 1e-6


def _eval_problem(seed: int, num_q: int = 60, num_g: int = 150, ids: int = 25):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, ids + 3, num_q)  # ids >= ids are never in the gallery: unmatched queries
    g_pids = rng.integers(0, ids + 8, num_g)
    g_pids[(g_pids >= ids) & (g_pids < ids + 3)] += 3  # gallery ids ids+3.. are never queried
    q_cams = rng.choice([3, 6], num_q)
    g_cams = rng.choice([1, 2, 4, 5], num_g)
    dist = rng.standard_normal((num_q, num_g)).astype(np.float32)
    dist -= 1.5 * (q_pids[:, None] == g_pids[None]).astype(np.float32)  # matches tend to rank high
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", SEEDS)
def test_eval_sysu_matches_reference(seed):
    dist, q_pids, g_pids, q_cams, g_cams = _eval_problem(seed)
    cmc, m_ap, m_inp = ev.eval_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    exp_cmc, exp_map, exp_minp = ref.eval_sysu_official(dist, q_pids, g_pids, q_cams, g_cams)
    assert np.asarray(cmc).shape == (20,)
    assert 0 < np.isin(q_pids, g_pids).sum() < len(q_pids)  # valid and invalid queries
    np.testing.assert_allclose(cmc, exp_cmc, rtol=0, atol=1e-6)
    assert abs(m_ap - exp_map) < 1e-9 and abs(m_inp - exp_minp) < 1e-9
    # the camera-2 removal for camera-3 queries matters on this data
    other, _, _ = ref.eval_sysu_official(dist, q_pids, g_pids, np.full_like(q_cams, 6), g_cams)
    assert np.abs(other - exp_cmc).max() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_eval_regdb_matches_reference(seed):
    dist, q_pids, g_pids, _, _ = _eval_problem(seed)
    cmc, m_ap, m_inp = ev.eval_regdb(dist, q_pids, g_pids)
    exp_cmc, exp_map, exp_minp = ref.eval_regdb_official(dist, q_pids, g_pids)
    np.testing.assert_allclose(cmc, exp_cmc, rtol=0, atol=1e-6)
    assert abs(m_ap - exp_map) < 1e-9 and abs(m_inp - exp_minp) < 1e-9
    assert 0 < exp_cmc[0] < exp_cmc[-1] <= 1


@pytest.mark.parametrize("seed", SEEDS)
def test_neighbor_relation_loss_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(24, 32, generator=g, dtype=torch.float64)
    target = emb + 0.3 * torch.randn(24, 32, generator=g, dtype=torch.float64)
    a = emb.clone().requires_grad_(True)
    b = emb.clone().requires_grad_(True)
    got = losses.neighbor_relation_loss(a, target)
    expected = ref.nrl_official(b, target)
    assert abs(got.item() - expected.item()) < 1e-6
    got.backward()
    expected.backward()
    assert float((a.grad - b.grad).abs().max()) < 1e-6
    for sigma, delta in ((0.5, 1.0), (2.0, 0.7)):
        v1 = losses.neighbor_relation_loss(emb.float(), target.float(), sigma=sigma, delta=delta)
        v2 = ref.nrl_official(emb.float(), target.float(), sigma=sigma, delta=delta)
        assert abs(float(v1) - float(v2)) < 1e-6
