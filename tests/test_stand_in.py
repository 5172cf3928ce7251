"""The demo's synthetic pieces (issue 29): colour-grid identities and the stand-in start that train.py takes as
``--imagenet``."""

import numpy as np
import pytest
import torch

from rpnr.data.synthetic import LUMINANCE, background, make_identity, render
from rpnr.models import build_model
from rpnr.tools.stand_in import main as stand_in_main
from rpnr.tools.stand_in import train_stand_in


def test_infrared_images_are_grey_and_keep_the_grids_luminance_order():
    person, rng = make_identity(np.random.default_rng(3)), np.random.default_rng(4)
    tint = background(rng)
    ir = render(person, rng, 128, 64, True, tint).astype(np.int64)
    assert np.ptp(ir.mean(axis=(0, 1))) < 2  # grey: the channels differ by their noise only
    rgb = render(person, rng, 128, 64, False, tint).astype(np.float64)
    assert np.ptp(rgb.mean(axis=(0, 1))) > 10
    # block centres: the infrared grid is a monotone function of the visible grid's luminance
    centres = [(int((r + 0.5) * 128 / 6), int((c + 0.5) * 64 / 3)) for r in range(6) for c in range(3)]
    lum = np.array([rgb[y, x] @ LUMINANCE for y, x in centres])
    grey = np.array([ir[y, x, 0] for y, x in centres])
    true = person.colors.reshape(18, 3) @ LUMINANCE
    assert np.corrcoef(true, grey)[0, 1] > 0.9 and np.corrcoef(true, lum)[0, 1] > 0.9


def test_two_identities_differ_more_than_two_images_of_one():
    a, b = (make_identity(np.random.default_rng(s)) for s in (1, 2))
    rng, tint = np.random.default_rng(0), np.full(3, 0.5)
    a1, a2, b1 = (render(p, rng, 64, 32, False, tint).astype(np.float64) for p in (a, a, b))
    assert np.abs(a1 - a2).mean() < 0.6 * np.abs(a1 - b1).mean()


def test_the_stand_in_start_loads_as_imagenet_weights(tmp_path):
    out = tmp_path / "start.pth"
    losses = train_stand_in(out, classes=8, steps=4, batch_size=8, log=lambda line: None)
    assert np.isfinite([losses["first_loss"], losses["last_loss"]]).all()
    state = torch.load(out, weights_only=True)
    assert "layer4.2.bn3.weight" in state and not any(k.startswith("fc.") for k in state)
    model = build_model("agw", pretrained=str(out))
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert torch.equal(model.state_dict()["infrared_stem.conv1.weight"], state["conv1.weight"])


@pytest.mark.parametrize("argv, line", [
    (["--out", "{tmp}"], "--out is a folder; give a file name"),
    (["--out", "{tmp}/x.pth", "--steps", "0"], "--steps must be a positive integer, got 0"),
])
def test_the_stand_in_command_refuses_in_one_line(tmp_path, capsys, argv, line):
    assert stand_in_main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rpnr.tools.stand_in: error: {line}"]
    assert not (tmp_path / "x.pth").exists()
