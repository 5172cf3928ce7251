"""The identity sampler and the endless batch stream (release's RandomMultipleGallerySampler + IterLoader)."""

import random

import numpy as np
import pytest
import torch

from rpnr.data.sampler import BatchStream, RandomMultipleGallerySampler
from rpnr.engine.rng import seed_everything


def _groups(positions, labels, num_instances):
    """Split a pass into per-identity groups (anchor first)."""
    out, i = [], 0
    while i < len(positions):
        pid = labels[positions[i]]
        j = i + 1
        while j < len(positions) and j - i < num_instances and labels[positions[j]] == pid:
            j += 1
        out.append(positions[i:j])
        i = j
    return out


def test_groups_prefer_other_cameras():
    seed_everything(0)
    # identity 0: cams 1,1,2,2,2 ; identity 1: cams 1 x 6 ; identity 2: cams 2,1
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2])
    cams = np.array([1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1])
    sampler = RandomMultipleGallerySampler(labels, cams, num_instances=4)
    assert sampler.num_identities == 3
    assert sampler.pass_length() == 12 and len(sampler) == 12
    for _ in range(50):
        positions = list(iter(sampler))
        assert len(positions) == 12
        groups = _groups(positions, labels, 4)
        assert sorted(labels[g[0]] for g in groups) == [0, 1, 2]
        for g in groups:
            assert len(g) == 4 and len({labels[p] for p in g}) == 1
            anchor, rest = g[0], g[1:]
            pid = labels[anchor]
            if pid == 1:  # a single camera: the other samples, anchor excluded, no repeats (5 >= 4)
                assert anchor not in rest and len(set(rest)) == 3
            else:  # other cameras exist: every pick is from a camera other than the anchor's
                assert all(cams[p] != cams[anchor] for p in rest)
            if pid == 2:  # one other-camera sample: drawn with replacement
                assert len(set(rest)) == 1


def test_single_sample_identity_and_outliers():
    seed_everything(1)
    labels = np.array([-1, 0, 1, 1, -1, 1])
    cams = np.array([1, 1, 1, 2, 2, 1])
    sampler = RandomMultipleGallerySampler(labels, cams, num_instances=3)
    assert sampler.pass_length() == 1 + 3
    seen = set()
    for _ in range(30):
        positions = list(iter(sampler))
        assert len(positions) == 4
        assert 0 not in positions and 4 not in positions  # outliers never sampled
        seen.update(positions)
    assert seen == {1, 2, 3, 5}


def test_stream_is_reproducible_and_drops_the_tail():
    labels = np.repeat(np.arange(5), 3)  # 5 identities x 3 samples
    cams = np.tile([1, 2, 2], 5)
    seed_everything(3)
    stream = BatchStream(RandomMultipleGallerySampler(labels, cams, num_instances=2), batch_size=4)
    first = stream.take(6)  # one pass = 10 positions -> 2 batches, tail of 2 dropped; 3 passes
    assert all(b.shape == (4,) and b.dtype == np.int64 for b in first)
    for b in first:  # a batch holds two whole identity pairs
        assert labels[b[0]] == labels[b[1]] and labels[b[2]] == labels[b[3]]
    seed_everything(3)
    again = BatchStream(RandomMultipleGallerySampler(labels, cams, num_instances=2), batch_size=4).take(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # the stream draws from the global generators, in the release's calls
    seed_everything(3)
    random.random()
    other = BatchStream(RandomMultipleGallerySampler(labels, cams, num_instances=2), batch_size=4).take(6)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_identity_order_is_a_permutation_each_pass():
    labels = np.repeat(np.arange(8), 2)
    cams = np.tile([1, 2], 8)
    torch.manual_seed(0)
    sampler = RandomMultipleGallerySampler(labels, cams, num_instances=2)
    orders = [tuple(labels[p] for p in list(iter(sampler))[::2]) for _ in range(20)]
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert len(set(orders)) > 10  # a fresh permutation per pass


def test_stream_refuses_a_pass_shorter_than_a_batch():
    sampler = RandomMultipleGallerySampler(np.array([0, 0, 1]), np.array([1, 2, 1]), num_instances=4)
    assert sampler.pass_length() == 5
    with pytest.raises(ValueError, match="fewer than a batch of 8"):
        BatchStream(sampler, batch_size=8)
