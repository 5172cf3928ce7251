"""rpnr.engine.labels: label purity and the epoch's memories on hand-computed cases."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_scaled

from rpnr.engine.labels import EpochLabels, ModalityLabels, build_memories, label_purity


@pytest.mark.parametrize("labels,pids,expected", [
    # cluster 0 holds ids [5, 5, 7] (majority 5: 2 of 3), cluster 1 [8, 8] (2 of 2), the outlier is ignored: 4/5
    ([0, 0, 0, 1, 1, -1], [5, 5, 7, 8, 8, 9], 4 / 5),
    # a tie counts one member of the cluster; labels need not be contiguous: (1 + 1) / 3
    ([3, 3, 0], [1, 2, 1], 2 / 3),
    # an identity split over two pure clusters is still pure
    ([0, 0, 1, 1], [4, 4, 4, 4], 1.0),
    # two identities merged into one cluster, half and half plus one: 3 of 5
    ([2, 2, 2, 2, 2, -1, -1], [1, 1, 1, 6, 6, 6, 6], 3 / 5),
    # outliers' identities play no part, whatever they are
    ([-1, -1, 0], [1, 1, 2], 1.0),
    # only outliers: 0.0
    ([-1, -1, -1], [1, 2, 3], 0.0),
])
def test_label_purity_hand_computed(labels, pids, expected):
    got = label_purity(np.array(labels), np.array(pids))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12)


def _modality(centers: torch.Tensor, train: list[int]) -> ModalityLabels:
    train = np.array(train, dtype=np.int64)
    return ModalityLabels(cluster=train.copy(), train=train, centers=centers, relabeled=0,
                          purity=0.0, ari=0.0, nmi=0.0)


def test_build_memories_hybrid_rows_and_empty_clusters():
    c_rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    c_ir = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 4.0], [1.0, 1.0, 1.0]])
    i2r = np.array([1, 0, 1])
    # IR cluster 2 lost its members to the calibration: its hybrid row stays zero (release quirk)
    labels = EpochLabels(_modality(c_rgb, [0, 1, 1, -1]), _modality(c_ir, [0, 0, 1, -1, 1]), np.array([0, 1]), i2r)
    assert labels.ir.num_clusters == 3 and labels.ir.num_outliers == 1 and labels.rgb.num_clusters == 2
    memories = build_memories(labels, temp=0.05, momentum=0.1, hybrid=True)
    assert set(memories) == {"rgb", "ir", "hybrid"}
    # hybrid row i = normalise((c_ir[i] + c_rgb[i2r[i]]) / 2): (3, 2, 0) / sqrt(13), (1, 0, 4) / sqrt(17), 0
    rows = torch.tensor([[3.0, 2.0, 0.0], [1.0, 0.0, 4.0]]) / torch.tensor([[13.0], [17.0]]).sqrt()
    expected = torch.cat([rows, torch.zeros(1, 3)])
    torch.testing.assert_close(memories["hybrid"].features, torch.cat([expected, expected]))  # CMhcl: two halves
    assert_close_scaled(memories["rgb"].features, F.normalize(c_rgb, dim=1).repeat(2, 1), name="rgb")
    assert_close_scaled(memories["ir"].features, F.normalize(c_ir, dim=1).repeat(2, 1), name="ir")
    assert all((m.mode, m.temp, m.momentum) == ("CMhcl", 0.05, 0.1) for m in memories.values())
    assert set(build_memories(labels, temp=0.05, momentum=0.1)) == {"rgb", "ir"}


def test_label_quality_scores_against_identities(monkeypatch):
    """ARI and NMI of the labelled samples (outliers left out, like purity), by hand: labels crossing two
    identities give ARI -0.5 and NMI 0; an outlier does not count."""
    from rpnr.engine import labels as epoch_labels

    feats = torch.randn(5, 8)
    pids = np.array([0, 0, 1, 1, 1])
    for labels, ari, nmi, purity in (([0, 1, 0, 1, -1], -0.5, 0.0, 0.5), ([3, 3, 7, 7, -1], 1.0, 1.0, 1.0)):
        monkeypatch.setattr(epoch_labels, "cluster_features", lambda *a, _l=labels, **k: np.array(_l))
        got = epoch_labels.modality_labels(feats, pids, 0.5, 3, 2, 1, False, 2)
        assert (got.ari, got.nmi, got.purity) == (pytest.approx(ari), pytest.approx(nmi, abs=1e-12), purity)
