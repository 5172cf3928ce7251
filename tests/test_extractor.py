"""rpnr.FeatureExtractor: the test pipeline on raw files, PIL images and arrays of any size (DESIGN.md section 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import official_checkpoint_state, random_model
from PIL import Image

from rpnr import FeatureExtractor
from rpnr.common.checkpoints import save_checkpoint
from rpnr.common.errors import RawDataError
from rpnr.data.prepared import load_set
from rpnr.evaluation import extract_features_uint8

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small batches: one thread is faster
ROWS = [0, 7, 20, 41]  # prepared test rows compared with their raw files


@pytest.fixture(scope="module")
def model():
    return random_model(5)


@pytest.fixture(scope="module")
def checkpoint(model, tiny_regdb, tmp_path_factory):
    """Our checkpoint of ``model``, trained (so it says) on tiny_regdb's 32x16 images."""
    path = tmp_path_factory.mktemp("extractor") / "model_best.pth.tar"
    save_checkpoint({"model": model.state_dict(), "dataset": "regdb", "stage": "baseline",
                     "args": {"height": 32, "width": 16, "dataset": "regdb", "stage": "baseline", "trial": 1}}, path)
    return path


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return FeatureExtractor(checkpoint, device="cpu", batch_size=3)


@pytest.mark.parametrize(("prepared_set", "modality", "stem"), [("thermal_test", "thermal", "infrared"),
                                                                 ("visible_test", "Visible", "visible")])
def test_raw_files_give_the_test_pipelines_embeddings(extractor, model, tiny_regdb, prepared_set, modality, stem):
    images = load_set(tiny_regdb, prepared_set)  # Lanczos-resized raw files, in the order of *_paths.npy
    files = [tiny_regdb.parent / "raw" / p for p in images.paths[ROWS]]
    got = extractor(files, modality)
    want = extract_features_uint8(model, images.images[ROWS], stem, batch_size=64, flip=True, normalize=True,
                                  device="cpu", precision="fp32")
    assert got.dtype == torch.float32 and got.shape == (len(ROWS), 2048)
    assert (got - want).abs().max().item() <= 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(len(ROWS)), atol=1e-5)


def test_paths_pil_images_and_arrays_give_the_same_embeddings(extractor, tiny_regdb, tmp_path):
    paths = [tiny_regdb.parent / "raw" / p for p in load_set(tiny_regdb, "visible_test").paths[:3]]
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    other_size = np.random.default_rng(0).integers(0, 256, (50, 21, 3), dtype=np.uint8)  # not 2:1, not 64x32
    Image.fromarray(other_size).save(tmp_path / "other.png")
    by_path = extractor([*paths, tmp_path / "other.png"], "visible")
    assert torch.equal(by_path, extractor([Image.open(p) for p in paths] + [Image.fromarray(other_size)], "visible"))
    assert torch.equal(by_path, extractor([*arrays, other_size], "visible"))
    assert torch.equal(by_path, extractor([str(paths[0]), Image.open(paths[1]), arrays[2], other_size], "visible"))
    assert torch.equal(extractor([paths[0]], "visible"), extractor(str(paths[0]), "visible"))  # one, not in a list
    assert extractor([], "visible").shape == (0, 2048)


def test_modality_aliases_and_an_unknown_modality(extractor, tiny_regdb):
    image = np.array(Image.open(tiny_regdb.parent / "raw" / load_set(tiny_regdb, "thermal_test").paths[0]))
    infrared = extractor([image], "infrared")
    for alias in ("thermal", "NIR", "Infrared"):
        assert torch.equal(extractor([image], alias), infrared)
    assert not torch.equal(extractor([image], "visible"), infrared)  # the other stem
    with pytest.raises(ValueError, match=r"unknown modality 'depth'.*visible or infrared.*thermal, nir"):
        extractor([image], "depth")


def test_unreadable_file_is_named_and_bad_arrays_refused(extractor, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(RawDataError, match=r"^cannot read image .*notes\.jpg: [^\n]*$"):
        extractor([tmp_path / "notes.jpg"], "visible")
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\], got float32 \[8, 4, 3\]"):
        extractor([np.zeros((8, 4, 3), np.float32)], "visible")


def test_release_checkpoint_needs_the_image_size(model, extractor, tiny_regdb, tmp_path):
    path = tmp_path / "release.pth"
    save_checkpoint({"state_dict": official_checkpoint_state(model), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"^\S+release\.pth records no image size.*pass height and width$"):
        FeatureExtractor(path, device="cpu")
    file = tiny_regdb.parent / "raw" / load_set(tiny_regdb, "visible_test").paths[0]
    release = FeatureExtractor(path, device="cpu", height=32, width=16)
    assert (release.height, release.width) == (32, 16)
    assert torch.equal(release([file], "visible"), extractor([file], "visible"))
