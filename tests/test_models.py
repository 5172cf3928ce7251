"""Two-stream AGW model: joint-batch forward, BN coupling, non-local blocks, GeM, BN neck."""

import pytest
import torch
from conftest import assert_close_scaled
from torch import nn

from rpnr.models import build_model
from rpnr.models.agw import NonLocalBlock, gem_pool

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small inputs: one thread is faster


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model()


def _images(n, seed):
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def test_train_forward_shapes_and_joint_batch_norm(model):
    model.train()
    x_rgb, x_ir = _images(3, 1), _images(2, 2)
    with torch.no_grad():
        f_rgb, f_ir = model(x_rgb, x_ir)
        alone = model.embed(x_rgb, "visible")  # [3, 2048], BN statistics of the RGB batch only
        f_rgb_other, _ = model(x_rgb, _images(2, 3))  # same RGB images, other IR partners
    assert f_rgb.shape == (3, 2048) and f_ir.shape == (2, 2048)
    assert torch.isfinite(f_rgb).all() and torch.isfinite(f_ir).all()
    # train mode returns the BN output, not unit-norm rows
    assert not torch.allclose(f_rgb.norm(dim=1), torch.ones(3), atol=1e-2)
    # BN statistics cover the joint batch: the RGB features depend on the IR images
    assert (f_rgb - alone).abs().max() > 1e-3
    assert (f_rgb - f_rgb_other).abs().max() > 1e-3


def test_eval_embeddings_unit_norm_and_per_modality(model):
    model.eval()
    x_rgb, x_ir = _images(3, 4), _images(2, 5)
    with torch.no_grad():
        f_rgb, f_ir = model(x_rgb, x_ir)
        e_rgb = model.embed(x_rgb, "visible")
        e_ir = model.embed(x_ir, "infrared")
        e_rgb_as_ir = model.embed(x_rgb, "infrared")
    torch.testing.assert_close(e_rgb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(e_ir.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    # eval runs with running statistics: the joint forward equals the per-modality embeddings
    assert_close_scaled(f_rgb, e_rgb, name="visible")
    assert_close_scaled(f_ir, e_ir, name="infrared")
    # the two stems are distinct modules
    assert (e_rgb - e_rgb_as_ir).abs().max() > 1e-4


def test_non_local_blocks(model):
    blocks = [m for m in model.modules() if isinstance(m, NonLocalBlock)]
    assert sorted(b.W[0].out_channels for b in blocks) == [512, 512, 1024, 1024, 1024]
    for b in blocks:
        # official quirk: reduc_ratio // reduc_ratio = ONE inner channel
        assert b.g[0].out_channels == b.theta.out_channels == b.phi.out_channels == 1
        assert b.W[0].in_channels == 1
        assert float(b.W[1].weight.detach().abs().max()) == 0.0
        assert float(b.W[1].bias.detach().abs().max()) == 0.0
    block = blocks[0].eval()
    x = torch.randn(2, 512, 4, 2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # identity at initialisation


def test_non_local_attention_without_softmax():
    torch.manual_seed(2)
    block = NonLocalBlock(4).eval()
    with torch.no_grad():
        block.W[1].weight.fill_(1.0)
        x = torch.randn(1, 4, 2, 3)
        theta = block.theta(x).flatten(2)[0, 0]  # [6]
        phi = block.phi(x).flatten(2)[0, 0]
        g = block.g(x).flatten(2)[0, 0]
        y = (torch.outer(theta, phi) / 6) @ g  # theta . phi / N, no softmax
        expected = block.W(y.view(1, 1, 2, 3)) + x
        assert (expected - x).abs().max() > 0.1  # the attention branch contributes
        assert_close_scaled(block(x), expected)


def test_non_local_positions(model):
    # order of calls: layer1 (3 blocks), layer2 with non-local after blocks 2 and 3,
    # layer3 with non-local after blocks 3, 4 and 5, layer4 (3 blocks)
    calls = []

    def record_non_local(*_):
        calls.append("N")

    def record_block(*_):
        calls.append("B")

    hooks = []
    for m in model.modules():
        if isinstance(m, NonLocalBlock):
            hooks.append(m.register_forward_hook(record_non_local))
        elif type(m).__name__ == "Bottleneck":
            hooks.append(m.register_forward_hook(record_block))
    model.eval()
    with torch.no_grad():
        model.embed(_images(1, 6), "visible")
    for h in hooks:
        h.remove()
    assert "".join(calls) == "BBB" + "BBBNBN" + "BBBBNBNBN" + "BBB"


def test_gem_value():
    # channel 0: mean(1, 8, 27, 64) = 25 -> 25^(1/3) = 2.9240177; channel 1 all zero -> (1e-12)^(1/3) = 1e-4
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    out = gem_pool(x)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(25 ** (1 / 3), rel=1e-6)
    assert out[0, 1].item() == pytest.approx(1e-4, rel=1e-3)


def test_bn_neck_bias_frozen(model):
    necks = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(necks) == 1 and necks[0].num_features == 2048
    neck = necks[0]
    assert not neck.bias.requires_grad and float(neck.bias.detach().abs().max()) == 0.0
    assert neck.weight.requires_grad
    assert 0.0 < float((neck.weight.detach() - 1).abs().max()) < 0.1  # N(1, 0.01)
    assert neck.bias not in set(p for p in model.parameters() if p.requires_grad)


def test_build_model_errors():
    with pytest.raises(ValueError):
        build_model("resnet18")
    with pytest.raises(FileNotFoundError, match="no-imagenet"):
        build_model(pretrained="/nonexistent/resnet50.pth")
