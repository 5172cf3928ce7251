"""OT prototype matching, hybrid centres and the NPC label calibration (hand-made cases)."""

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from rpnr.matching import hybrid_centers, match_clusters, transport_plan


def _random_centers(k, d, seed):
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


def test_plan_has_uniform_marginals():
    plan = np.asarray(transport_plan(_random_centers(3, 16, 0), _random_centers(7, 16, 1), reg=5.0))
    assert plan.shape == (3, 7)
    np.testing.assert_allclose(plan.sum(1), np.full(3, 1 / 3), atol=1e-5)
    np.testing.assert_allclose(plan.sum(0), np.full(7, 1 / 7), atol=1e-5)


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# RGB clusters at 0 and 20 degrees, IR clusters at 12 and 90 degrees. Greedy nearest matching sends both RGB
# clusters to IR 0 (12 degrees) and both IR clusters to RGB 1 (20 degrees); the transport plan, whose rows and
# columns must each carry half the mass, pairs RGB 0 - IR 0 and RGB 1 - IR 1 (cost e^-cos12 + e^-cos70 = 1.086
# against e^-cos90 + e^-cos8 = 1.372 for the other pairing).
RGB_DEG, IR_DEG = (0.0, 20.0), (12.0, 90.0)


def _hand_plan_2x2(reg: float) -> list[list[float]]:
    """The entropic OT plan of the 2x2 problem above, uniform marginals (1/2, 1/2), in closed form.

    P = diag(u) K diag(v), K = exp(-C / reg), C = exp(-cos). Rows and columns summing to 1/2 force
    P = [[p, 1/2 - p], [1/2 - p, p]], and P11 P22 / (P12 P21) = K11 K22 / (K12 K21) = q gives
    p / (1/2 - p) = sqrt(q), p = sqrt(q) / (2 (1 + sqrt(q))).
    """
    cost = [[math.exp(-math.cos(math.radians(r - i))) for i in IR_DEG] for r in RGB_DEG]
    q = math.exp(-(cost[0][0] + cost[1][1] - cost[0][1] - cost[1][0]) / reg)
    p = math.sqrt(q) / (2 * (1 + math.sqrt(q)))
    return [[p, 0.5 - p], [0.5 - p, p]]


def _hand_sinkhorn_2x2(reg: float) -> list[list[float]]:
    """The same plan by Sinkhorn-Knopp iterations in plain floats: v = b / K^T u, u = a / K v, until the
    columns sum to 1/2 within 1e-15."""
    k = [[math.exp(-math.exp(-math.cos(math.radians(r - i))) / reg) for i in IR_DEG] for r in RGB_DEG]
    u, v = [1.0, 1.0], [1.0, 1.0]
    for _ in range(100_000):
        v = [0.5 / (k[0][j] * u[0] + k[1][j] * u[1]) for j in range(2)]
        u = [0.5 / (k[i][0] * v[0] + k[i][1] * v[1]) for i in range(2)]
        plan = [[u[i] * k[i][j] * v[j] for j in range(2)] for i in range(2)]
        if abs(plan[0][0] + plan[1][0] - 0.5) < 1e-15:
            break
    return plan


@pytest.mark.parametrize("reg", [5.0, 0.5, 0.05])
def test_transport_plan_of_a_2x2_problem_by_hand(reg):
    hand = _hand_plan_2x2(reg)
    iterated = _hand_sinkhorn_2x2(reg)
    for i in range(2):
        for j in range(2):
            assert iterated[i][j] == pytest.approx(hand[i][j], rel=1e-9)
    c_rgb = torch.tensor([_unit(d) for d in RGB_DEG]) * torch.tensor([[1.0], [3.0]])  # norms do not matter
    c_ir = torch.tensor([_unit(d) for d in IR_DEG]) * torch.tensor([[0.5], [2.0]])
    plan = np.asarray(transport_plan(c_rgb, c_ir, reg=reg))
    assert plan.shape == (2, 2)
    np.testing.assert_allclose(plan, np.array(hand), rtol=1e-4, atol=1e-7)
    # C12 + C21 - C11 - C22 = 0.285136: p = 0.25356 (reg 5), 0.28540 (reg 0.5), 0.47269 (reg 0.05, near a pairing)
    assert hand[0][0] == pytest.approx({5.0: 0.25356, 0.5: 0.28540, 0.05: 0.47269}[reg], abs=1e-5)


def test_matching_is_the_plan_argmax_not_the_nearest_cluster():
    c_rgb = torch.tensor([_unit(d) for d in RGB_DEG])
    c_ir = torch.tensor([_unit(d) for d in IR_DEG])
    cos = c_rgb @ c_ir.t()  # [2, 2]
    assert cos.argmax(1).tolist() == [0, 0] and cos.argmax(0).tolist() == [1, 1]  # greedy nearest partners
    r2i, i2r = match_clusters(c_rgb, c_ir)  # the release's reg 5: a nearly uniform plan, its argmax still pairs
    np.testing.assert_array_equal(r2i, [0, 1])
    np.testing.assert_array_equal(i2r, [0, 1])
    hand = np.array(_hand_plan_2x2(5.0))
    np.testing.assert_array_equal(r2i, hand.argmax(1))
    np.testing.assert_array_equal(i2r, hand.argmax(0))


@pytest.mark.parametrize("reg", [5.0, 0.2])
def test_plan_marginals_of_a_non_square_problem(reg):
    c_rgb, c_ir = _random_centers(5, 4, 10), _random_centers(8, 4, 11)  # d = 4: cosines spread over [-1, 1]
    plan = np.asarray(transport_plan(c_rgb, c_ir, reg=reg))
    assert plan.shape == (5, 8) and (plan > 0).all()
    cost = np.exp(-(F.normalize(c_rgb, dim=1) @ F.normalize(c_ir, dim=1).t()).numpy())
    assert cost.max() - cost.min() > 1.5  # a non-uniform cost ...
    assert plan.std() / plan.mean() > {5.0: 0.05, 0.2: 0.5}[reg]  # ... and a plan far from the uniform 1 / 40
    # rows sum to 1 / K_rgb and columns to 1 / K_ir within Sinkhorn's stop threshold 1e-5 (a 2-norm)
    assert np.linalg.norm(plan.sum(1) - 1 / 5) < 1e-5
    assert np.linalg.norm(plan.sum(0) - 1 / 8) < 1e-5
    assert abs(plan.sum() - 1.0) < 1e-5
    # and it is the entropic plan: P = diag(u) K diag(v) (every 2x2 cross ratio equals K's)
    k = np.exp(-cost.astype(np.float64) / reg)
    ratio = plan[:, :1] * plan[:1, :] / (plan[:1, :1] * plan)  # [5, 8] P_i0 P_0j / (P_00 P_ij)
    np.testing.assert_allclose(ratio, k[:, :1] * k[:1, :] / (k[:1, :1] * k), rtol=1e-5)


def test_every_cluster_gets_a_partner_when_counts_differ():
    r2i, i2r = match_clusters(_random_centers(3, 16, 2), _random_centers(7, 16, 3))
    r2i, i2r = np.asarray(r2i), np.asarray(i2r)
    assert r2i.shape == (3,) and i2r.shape == (7,)
    assert np.issubdtype(r2i.dtype, np.integer) and np.issubdtype(i2r.dtype, np.integer)
    assert r2i.min() >= 0 and r2i.max() < 7
    assert i2r.min() >= 0 and i2r.max() < 3


def test_matching_equals_argmax_of_sinkhorn_plan():
    c_rgb, c_ir = _random_centers(6, 16, 4), _random_centers(9, 16, 5)
    cos = F.normalize(c_rgb, dim=1) @ F.normalize(c_ir, dim=1).t()  # [6, 9]
    cost = torch.exp(-cos).double().numpy()
    plan = ot.sinkhorn(np.full(6, 1 / 6), np.full(9, 1 / 9), cost, reg=5.0, numItermax=5000, stopThr=1e-5)
    r2i, i2r = match_clusters(c_rgb, c_ir, reg=5.0)
    np.testing.assert_array_equal(r2i, plan.argmax(1))
    np.testing.assert_array_equal(i2r, plan.argmax(0))


def test_matching_recovers_a_permutation():
    c_rgb = _random_centers(6, 16, 6)
    perm = np.array([3, 0, 5, 1, 4, 2])  # IR cluster perm[k] is RGB cluster k
    c_ir = torch.empty_like(c_rgb)
    c_ir[perm] = c_rgb * 2.0 + 0.05 * _random_centers(6, 16, 7)  # scale does not matter (cosine)
    r2i, i2r = match_clusters(c_rgb, c_ir)
    np.testing.assert_array_equal(r2i, perm)
    np.testing.assert_array_equal(i2r, np.argsort(perm))


def test_hybrid_centers_rows_and_present_mask():
    c_rgb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    c_ir = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 0.0], [2.0, -2.0]])
    i2r = np.array([2, 0, 1, 2])
    # row i = (c_ir[i] + c_rgb[i2r[i]]) / 2
    expected = torch.tensor([[2.5, 2.5], [2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    torch.testing.assert_close(hybrid_centers(c_rgb, c_ir, i2r), expected)
    present = np.array([True, False, True, False])  # IR clusters 1 and 3 lost all samples to NPC
    expected[[1, 3]] = 0.0  # official quirk: rows of empty clusters stay zero
    torch.testing.assert_close(hybrid_centers(c_rgb, c_ir, i2r, present), expected)


def _at(deg, norm=1.0):
    return [norm * math.cos(math.radians(deg)), norm * math.sin(math.radians(deg))]


# Cluster A members at 0, 40, 80 degrees: cosines 0.77 (0-40, 40-80) and 0.17 (0-80), so with
# self included rho = [1, 3, 1]. Cluster B at 100, 110, 120 degrees: all cosines > 0.5, rho = [3, 3, 3].
# With top_k = 2: A's prototype takes the 40-degree member and then, on the rho tie 1 = 1, the
# EARLIER of the 0- and 80-degree members; B takes its first two members (100, 110) -> 105 degrees.
A_ANGLES = {"a0": 0, "a40": 40, "a80": 80}
B_ANGLES = {"b100": 100, "b110": 110, "b120": 120}


def _npc_case(order):
    angles = {**A_ANGLES, **B_ANGLES, "out": 85}
    feats = torch.tensor([_at(angles[name]) for name in order])
    labels = np.array([-1 if n == "out" else (0 if n.startswith("a") else 1) for n in order])
    return feats, labels


def test_npc_tie_rule_earlier_member_first():
    from rpnr.pseudo_labels import calibrate_labels

    order = ["b100", "a0", "out", "a40", "b110", "a80", "b120"]
    feats, labels = _npc_case(order)
    # a0 comes first: prototype A = mean(40, 0) -> 20 degrees; B -> 105 degrees.
    # a80: 60 degrees from A, 25 from B -> relabelled to 1. The outlier stays -1.
    got = calibrate_labels(feats, labels.copy(), top_k=2)
    np.testing.assert_array_equal(got, [1, 0, -1, 0, 1, 1, 1])

    order = ["b100", "a80", "out", "a40", "b110", "a0", "b120"]
    feats, labels = _npc_case(order)
    # a80 comes first: prototype A = mean(40, 80) -> 60 degrees; a80 is 20 degrees from A, 25 from B
    got = calibrate_labels(feats, labels.copy(), top_k=2)
    np.testing.assert_array_equal(got, [1, 0, -1, 0, 1, 0, 1])
    # top_k larger than the clusters: all members -> A at 40 degrees, B at 110 degrees;
    # a80 is 40 degrees from A and 30 from B -> 1
    got = calibrate_labels(feats, labels.copy(), top_k=20)
    np.testing.assert_array_equal(got, [1, 1, -1, 0, 1, 0, 1])


def test_npc_prototype_is_mean_of_raw_features():
    from rpnr.pseudo_labels import calibrate_labels

    # cluster 0: (norm 5, 0 deg) and (norm 1, 58 deg); cluster 1: one member at 95 deg.
    # raw mean = (5 + cos 58, sin 58) / 2 -> 8.7 deg: the 58-deg member is 49.3 deg from it and
    # 37 deg from cluster 1 -> relabelled 1 (a mean of normalised features, at 29 deg, would keep 0).
    feats = torch.tensor([_at(0, 5.0), _at(58), _at(95)])
    got = calibrate_labels(feats, np.array([0, 0, 1]), top_k=20)
    np.testing.assert_array_equal(got, [0, 1, 1])


def test_npc_keeps_clean_labels_and_outliers():
    from rpnr.pseudo_labels import calibrate_labels

    g = torch.Generator().manual_seed(8)
    centres = F.normalize(torch.randn(3, 16, generator=g), dim=1) * 4
    labels = np.repeat(np.arange(3), 5)
    feats = centres[labels] + 0.1 * torch.randn(15, 16, generator=g)
    labels[[2, 9]] = -1
    got = calibrate_labels(feats, labels, top_k=4)
    np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize("top_k", [1, 3])
def test_npc_output_type(top_k):
    from rpnr.pseudo_labels import calibrate_labels

    feats, labels = _npc_case(["a0", "a40", "a80", "b100", "b110", "b120", "out"])
    got = calibrate_labels(feats, labels, top_k=top_k)
    assert isinstance(got, np.ndarray) and got.shape == (7,)
    assert np.issubdtype(got.dtype, np.integer)
    assert got[6] == -1 and set(got[:6].tolist()) <= {0, 1}
