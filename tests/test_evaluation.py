"""Hand-computed cases for the SYSU-MM01 / RegDB metrics and the test-feature extraction."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from conftest import assert_close_scaled

from rpnr.evaluation import IMAGENET_MEAN, IMAGENET_STD, eval_regdb, eval_sysu, extract_features, extract_features_uint8
from rpnr.models import build_model

# a ResNet-50 forward over other batch sizes runs other float32 kernels: embeddings agree to ~1e-6 of their largest
# entry; any real difference (normalisation, flip, mean/std, eval mode) is above 1e-3
REL = 5e-5


def _distmat_from_orders(orders, num_g):
    """Distances that rank gallery index orders[q][r] at position r for query q."""
    dist = np.zeros((len(orders), num_g), dtype=np.float32)
    for q, order in enumerate(orders):
        dist[q, order] = np.arange(num_g, dtype=np.float32)
    return dist


# gallery index:        0  1  2  3  4  5  6
SYSU_G_PIDS = np.array([1, 2, 1, 3, 2, 4, 3])
SYSU_G_CAMS = np.array([2, 1, 1, 4, 5, 2, 5])
SYSU_Q_PIDS = np.array([1, 1, 2, 5, 4])
SYSU_Q_CAMS = np.array([3, 6, 6, 6, 3])
SYSU_ORDERS = [
    [0, 1, 3, 2, 4, 5, 6],  # q0 pid 1 cam 3
    [0, 1, 3, 2, 4, 5, 6],  # q1 pid 1 cam 6
    [3, 6, 2, 1, 4, 0, 5],  # q2 pid 2 cam 6
    [0, 1, 2, 3, 4, 5, 6],  # q3 pid 5: no match in the gallery
    [5, 0, 1, 2, 3, 4, 6],  # q4 pid 4 cam 3: its only match is in camera 2
]


def test_eval_sysu_hand_computed():
    # q0 (cam 3): gallery 0 and 5 (camera 2) are dropped; kept pids [2, 3, 1, 2, 3], match at 3rd place
    #     AP = 1/3, INP = 1/3; distinct identities [2, 3, 1] -> first-position CMC hit at rank 3
    # q1 (cam 6): nothing dropped; pids [1, 2, 3, 1, 2, 4, 3], matches at 1 and 4
    #     AP = (1/1 + 2/4) / 2 = 0.75, INP = 2/4 = 0.5, CMC hit at rank 1
    # q2 (cam 6): pids [3, 3, 1, 2, 2, 1, 4], matches at 4 and 5
    #     AP = (1/4 + 2/5) / 2 = 0.325, INP = 2/5 = 0.4; distinct [3, 1, 2, 4] -> rank 3 (standard CMC: 4)
    # q3: pid 5 absent -> not valid; q4 (cam 3): only pid-4 image is camera 2 -> not valid
    # valid queries = 3: CMC@1..3 = [1/3, 1/3, 3/3]
    # mAP = (1/3 + 0.75 + 0.325) / 3 = 0.4694444, mINP = (1/3 + 0.5 + 0.4) / 3 = 0.4111111
    dist = _distmat_from_orders(SYSU_ORDERS, len(SYSU_G_PIDS))
    cmc, m_ap, m_inp = eval_sysu(dist, SYSU_Q_PIDS, SYSU_G_PIDS, SYSU_Q_CAMS, SYSU_G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3, 1.0], atol=1e-6)
    assert m_ap == pytest.approx((1 / 3 + 0.75 + 0.325) / 3, abs=1e-6)
    assert m_inp == pytest.approx((1 / 3 + 0.5 + 0.4) / 3, abs=1e-6)


def test_eval_sysu_camera_rule_only_for_camera_3():
    # Same rankings with every query moved to camera 6: nothing is dropped.
    # q0 = q1: AP 0.75, INP 0.5, rank 1; q2 as before; q4 (pid 4 at the top) becomes valid: AP = INP = 1.
    # valid = 4: CMC = [3/4, 3/4, 4/4]; mAP = (0.75 + 0.75 + 0.325 + 1) / 4; mINP = (0.5 + 0.5 + 0.4 + 1) / 4
    dist = _distmat_from_orders(SYSU_ORDERS, len(SYSU_G_PIDS))
    cams6 = np.full_like(SYSU_Q_CAMS, 6)
    cmc, m_ap, m_inp = eval_sysu(dist, SYSU_Q_PIDS, SYSU_G_PIDS, cams6, SYSU_G_CAMS, max_rank=3)
    np.testing.assert_allclose(cmc, [0.75, 0.75, 1.0], atol=1e-6)
    assert m_ap == pytest.approx((0.75 + 0.75 + 0.325 + 1.0) / 4, abs=1e-6)
    assert m_inp == pytest.approx((0.5 + 0.5 + 0.4 + 1.0) / 4, abs=1e-6)


def test_eval_sysu_first_position_cmc_differs_from_standard():
    # Only q2: pids [3, 3, 1, 2, 2, 1, 4]; standard CMC would hit at rank 4, the release's
    # identity-deduplicated CMC hits at rank 3 (distinct identities [3, 1, 2, 4]).
    dist = _distmat_from_orders(SYSU_ORDERS[2:3], len(SYSU_G_PIDS))
    cmc, m_ap, _ = eval_sysu(dist, SYSU_Q_PIDS[2:3], SYSU_G_PIDS, SYSU_Q_CAMS[2:3], SYSU_G_CAMS, max_rank=4)
    np.testing.assert_allclose(cmc, [0.0, 0.0, 1.0, 1.0], atol=1e-6)
    assert m_ap == pytest.approx(0.325, abs=1e-6)


def test_eval_sysu_all_queries_invalid_is_an_error():
    dist = _distmat_from_orders(SYSU_ORDERS[3:4], len(SYSU_G_PIDS))
    with pytest.raises((ValueError, AssertionError)):
        eval_sysu(dist, SYSU_Q_PIDS[3:4], SYSU_G_PIDS, SYSU_Q_CAMS[3:4], SYSU_G_CAMS, max_rank=3)


def test_eval_regdb_standard_cmc():
    # gallery pids [1, 1, 2, 2]
    # q0 pid 1, ranked pids [2, 2, 1, 1]: first hit rank 3 (standard CMC, no deduplication)
    #     AP = (1/3 + 2/4) / 2 = 0.4166667, INP = 2/4 = 0.5
    # q1 pid 2, ranked pids [2, 1, 1, 2]: rank 1, AP = (1/1 + 2/4) / 2 = 0.75, INP = 2/4 = 0.5
    # q2 pid 3: absent, not valid. valid = 2: CMC = [1/2, 1/2, 2/2, 2/2]
    g_pids = np.array([1, 1, 2, 2])
    q_pids = np.array([1, 2, 3])
    dist = _distmat_from_orders([[2, 3, 0, 1], [2, 0, 1, 3], [0, 1, 2, 3]], 4)
    cmc, m_ap, m_inp = eval_regdb(dist, q_pids, g_pids, max_rank=4)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    assert m_ap == pytest.approx((5 / 12 + 0.75) / 2, abs=1e-6)
    assert m_inp == pytest.approx(0.5, abs=1e-6)


@pytest.fixture(scope="module")
def eval_model():
    torch.manual_seed(0)
    return build_model().eval()


def test_extract_features_flip_average(eval_model):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        e = eval_model.embed(x, "infrared")  # [3, 2048]
        e_flip = eval_model.embed(torch.flip(x, dims=[3]), "infrared")
    mean = (e + e_flip) / 2
    plain = extract_features(eval_model, x, "infrared", batch_size=2, flip=False)
    flipped = extract_features(eval_model, x, "infrared", batch_size=2, flip=True)
    unnormed = extract_features(eval_model, x, "infrared", batch_size=2, flip=True, normalize=False)
    assert_close_scaled(plain, e, name="plain", rel=REL)
    assert_close_scaled(flipped, mean / mean.norm(dim=1, keepdim=True), name="flipped", rel=REL)
    assert_close_scaled(unnormed, mean, name="unnormalised", rel=REL)
    assert flipped.shape == (3, 2048)
    torch.testing.assert_close(flipped.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert not torch.allclose(flipped, plain, atol=1e-4)  # the flip really changes the embedding


def test_uint8_and_float_extraction_give_the_same_embeddings(eval_model):
    # the float path takes the images as the release's loader makes them: ToTensor (/255, CHW) and Normalize
    images = np.random.default_rng(2).integers(0, 256, (5, 32, 16, 3), dtype=np.uint8)  # [N, H, W, 3]
    to_float = T.Compose([T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    x = torch.stack([to_float(image) for image in images])  # [N, 3, H, W]
    seen = []
    for flip, normalize in ((False, True), (True, True), (True, False)):
        from_float = extract_features(eval_model, x, "visible", batch_size=2, flip=flip, normalize=normalize)
        from_uint8 = extract_features_uint8(eval_model, images, "visible", batch_size=3, flip=flip,
                                            normalize=normalize, progress=seen.append)
        assert from_uint8.shape == (5, 2048) and from_uint8.dtype == torch.float32
        assert_close_scaled(from_uint8, from_float, name=f"flip {flip}, normalize {normalize}", rel=REL)
    assert seen == [3, 2] * 3  # progress(n) after each batch with its size
    with torch.no_grad():
        e = eval_model.embed(x, "visible")
        mean = (e + eval_model.embed(torch.flip(x, dims=[3]), "visible")) / 2
    assert_close_scaled(extract_features_uint8(eval_model, images, "visible", batch_size=4),
                        mean / mean.norm(dim=1, keepdim=True), name="flipped", rel=REL)
    eval_model.train()
    try:  # a model in training mode is embedded in eval mode and left in training mode
        assert_close_scaled(extract_features_uint8(eval_model, images, "visible", flip=False), e, name="train mode",
                            rel=REL)
        assert eval_model.training
    finally:
        eval_model.eval()


def test_fp32_extraction_switches_tf32_and_autotuning_off_and_restores():
    from rpnr.evaluation import feature_precision

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    try:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, True, True
        with feature_precision("fp32", torch.device("cuda")):  # only flags: no GPU needed
            assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (False, False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (True, True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


def test_feature_precision_modes():
    """tf32 switches TF32 on for CUDA extraction (and restores); the CPU always computes in plain float32."""
    from rpnr.evaluation import feature_precision

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    try:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = False, False, True
        with feature_precision("tf32", torch.device("cuda")):
            assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (True, True, False)
        with feature_precision("tf32", torch.device("cpu")):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        with feature_precision("bf16", torch.device("cpu")):
            assert not torch.is_autocast_enabled("cpu")
        assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark) == (False, False, True)
        with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
            with feature_precision("fp16", torch.device("cpu")):
                pass
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved
