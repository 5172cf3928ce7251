"""Shared fixtures: small synthetic raw SYSU-MM01 / RegDB trees and their 64x32 prepared folders, and the
helpers several test files share (import them with ``from conftest import ...``).

The raw trees are session-scoped and must not be modified by tests (copy them first).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

# no bytecode from this process's later imports (rpnr, bench, the test modules) nor from any subprocess (train.py,
# torchrun, the prepare scripts): the suite leaves the working tree as it found it (run it as
# ``python -B -m pytest`` so that this file's own bytecode is not written either)
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
sys.dont_write_bytecode = True

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # rpnr and bench importable under a bare ``pytest`` too (not only python -m pytest)
    sys.path.insert(0, str(REPO))

from rpnr.data.prepare import write_prepared  # noqa: E402
from rpnr.data.regdb import plan_regdb  # noqa: E402
from rpnr.data.synthetic import write_regdb, write_sysu  # noqa: E402
from rpnr.data.sysu import plan_sysu  # noqa: E402
from rpnr.evaluation import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rpnr.models import build_model  # noqa: E402

PREPARED_HEIGHT, PREPARED_WIDTH = 64, 32
SYSU_SMALL = {"train_ids": 10, "val_ids": 2, "test_ids": 6, "per_camera": 3, "height": 96, "width": 48, "seed": 0}
REGDB_SMALL = {"ids": 12, "per_modality": 4, "height": 96, "width": 48, "seed": 0}
H, W = PREPARED_HEIGHT, PREPARED_WIDTH  # test images of the prepared folders and the official-pipeline references
KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")  # metrics of test.py --json
TEMP = 0.05  # cluster-memory temperature of the memory/loss references
OFFICIAL_STATE_DICT = REPO / "tests" / "data" / "official_agw_state_dict.json"


# ----------------------------------------------------------------------------- hermetic environment

OFFLINE_PROXY = "http://127.0.0.1:9"  # the discard port: a connection through it is refused at once
_NETWORK_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                      "ALL_PROXY")


def _no_network(url, *args, **kwargs):
    raise OSError(f"the tests run without the network (asked for {url})")


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment(tmp_path_factory):
    """Every test and every subprocess it starts (they inherit ``os.environ``) sees an empty torch cache of its
    own (``TORCH_HOME``; a test that needs a "cached" file puts a fake one into a folder of its own) and no
    network: torch.hub's downloader fails in this process, and urllib in subprocesses goes through a proxy
    that refuses the connection. Set up before any other fixture (session-scoped and autouse)."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    saved = {name: os.environ.get(name) for name in ("TORCH_HOME", *_NETWORK_VARIABLES)}
    os.environ["TORCH_HOME"] = str(torch_home)
    for name in _NETWORK_VARIABLES:
        os.environ.pop(name, None)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ[name] = OFFLINE_PROXY
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "download_url_to_file", _no_network)
        yield torch_home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ----------------------------------------------------------------------------- float comparisons


def assert_close_scaled(actual, expected, rel: float = 1e-5, name: str = "", floor: float = 1e-30) -> None:
    """Assert ``max |actual - expected| <= rel * max(max |expected|, floor)``: one tolerance per tensor, scaled
    to its largest entry. Float32 sums in another order (slices, threads, SIMD width) move every entry by a
    few units in the last place of the largest terms, so an element-wise relative tolerance is too tight for
    the small entries of a large tensor and a fixed absolute one too loose for a small tensor.

    ``floor``: the least scale, for a tensor whose own values are rounding noise of larger terms (the gradient
    of a convolution bias ahead of a batch norm is zero in exact arithmetic); pass e.g. 1e-3 of the largest
    gradient of the model. Same shape and dtype required; NaN or infinity anywhere fails. ``actual`` /
    ``expected``: tensors or arrays; ``name`` labels the failure message, which gives the numbers."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    label = f"{name}: " if name else ""
    assert actual.shape == expected.shape, f"{label}shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{label}dtype {actual.dtype} != {expected.dtype}"
    if expected.numel() == 0:
        return
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert torch.isfinite(e).all() and torch.isfinite(a).all(), f"{label}non-finite entries"
    diff = (a - e).abs()
    worst = int(diff.argmax())
    scale = max(e.abs().max().item(), floor)
    bound = rel * scale
    assert diff.max().item() <= bound, (
        f"{label}max |actual - expected| = {diff.max().item():.3g} > {rel:g} * {scale:.3g} = {bound:.3g} (at flat "
        f"index {worst}: actual {a.flatten()[worst].item():.9g}, expected {e.flatten()[worst].item():.9g}; "
        f"{int((diff > bound).sum())} of {diff.numel()} entries off)")


@pytest.fixture(scope="session")
def synthetic_sysu_raw(tmp_path_factory):
    """Raw SYSU-MM01-layout tree (JPEG, 96x48): 10 train + 2 val + 6 test ids, ~3 images per camera."""
    root = tmp_path_factory.mktemp("raw") / "sysu"
    write_sysu(root, **SYSU_SMALL)
    return root


@pytest.fixture(scope="session")
def synthetic_regdb_raw(tmp_path_factory):
    """Raw RegDB-layout tree (BMP, 96x48): 12 ids, 4 visible + 4 thermal images each, trials 1..10."""
    root = tmp_path_factory.mktemp("raw") / "regdb"
    write_regdb(root, **REGDB_SMALL)
    return root


@pytest.fixture(scope="session")
def prepared_sysu(synthetic_sysu_raw, tmp_path_factory):
    """``synthetic_sysu_raw`` prepared at 64x32 (path of the prepared folder)."""
    out = tmp_path_factory.mktemp("prepared") / "sysu"
    write_prepared(plan_sysu(str(synthetic_sysu_raw)), out, PREPARED_HEIGHT, PREPARED_WIDTH, workers=2)
    return out


@pytest.fixture(scope="session")
def prepared_regdb(synthetic_regdb_raw, tmp_path_factory):
    """``synthetic_regdb_raw`` prepared at 64x32 (path of the prepared folder)."""
    out = tmp_path_factory.mktemp("prepared") / "regdb"
    write_prepared(plan_regdb(str(synthetic_regdb_raw)), out, PREPARED_HEIGHT, PREPARED_WIDTH, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_regdb(tmp_path_factory) -> Path:
    """Synthetic RegDB (16 ids, 6 images per modality) prepared at 32x16, for training runs."""
    base = tmp_path_factory.mktemp("tiny_regdb")
    write_regdb(base / "raw", ids=16, per_modality=6, height=64, width=32, seed=0)
    write_prepared(plan_regdb(str(base / "raw")), base / "prepared_32x16", 32, 16, workers=2)
    return base / "prepared_32x16"


@pytest.fixture(scope="session")
def tiny_llcm(tmp_path_factory) -> Path:
    """A synthetic raw LLCM tree (default size) prepared at 32x16 by the command-line tools."""
    base = tmp_path_factory.mktemp("tiny_llcm")
    # run in ``base``, not in the checkout: ``python -m rpnr...`` finds the package through PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for cmd in ([sys.executable, "-m", "rpnr.data.synthetic", "--dataset", "llcm", "--out", str(base / "raw"),
                 "--height", "64", "--width", "32"],
                [sys.executable, str(REPO / "prepare_llcm.py"), "--data-dir", str(base / "raw"), "--output-dir",
                 str(base / "prepared"), "--height", "32", "--width", "16"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=base, env=env)
        assert done.returncode == 0, done.stderr
    return base / "prepared"


@pytest.fixture(scope="session")
def train_script():
    """The top-level ``train.py`` as a module (its ``main(argv)`` returns the exit status)."""
    spec = importlib.util.spec_from_file_location("rpnr_train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread_per_module():
    """``one_thread`` for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two spinning OpenMP threads cost several times more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the test script (test.py)


@functools.cache
def load_test_script():
    """The top-level ``test.py`` as a module, loaded once (its ``main(argv)`` returns the exit status)."""
    spec = importlib.util.spec_from_file_location("rpnr_test_script", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(capsys, *args) -> tuple[int, str, str]:
    """test.py's main() on the CPU in this process (no second torch start-up): (status, stdout, stderr)."""
    capsys.readouterr()
    status = load_test_script().main(["--device", "cpu", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


# ----------------------------------------------------------------------------- models and the release's layout


def random_model(seed: int) -> torch.nn.Module:
    """An eval-mode AGW model with non-trivial BN statistics and non-local weights, as a trained model has."""
    torch.manual_seed(seed)
    model = build_model()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
        for name, p in model.named_parameters():
            if name.startswith(("nl2", "nl3")) and name.endswith("W.1.weight"):
                p.normal_(0.0, 0.5)
    return model.eval()


# the release's (DataParallel) prefix -> this project's prefix, written from the release's agw.py independently
# of rpnr.models; the release's other keys (unused layers of its three ResNet-50s, the classifier) have no row
OFFICIAL_TO_OURS = (
    ("module.visible_module.visible.conv1.", "visible_stem.conv1."),
    ("module.visible_module.visible.bn1.", "visible_stem.bn1."),
    ("module.thermal_module.thermal.conv1.", "infrared_stem.conv1."),
    ("module.thermal_module.thermal.bn1.", "infrared_stem.bn1."),
    ("module.base_resnet.base.layer1.", "layer1."),
    ("module.base_resnet.base.layer2.", "layer2."),
    ("module.base_resnet.base.layer3.", "layer3."),
    ("module.base_resnet.base.layer4.", "layer4."),
    ("module.NL_2.", "nl2."),
    ("module.NL_3.", "nl3."),
    ("module.bottleneck.", "bottleneck."),
)


@functools.cache
def official_keys() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The frozen (name, shape) list of the release's checkpoint state dict, in its order."""
    keys = json.loads(OFFICIAL_STATE_DICT.read_text())["keys"]
    return tuple((name, tuple(shape)) for name, shape in keys)


def our_key(official: str) -> str | None:
    """The key of this project's model that the release's key ``official`` holds, or None for an unused key."""
    for old, new in OFFICIAL_TO_OURS:
        if official.startswith(old):
            return new + official[len(old):]
    return None


def official_checkpoint_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as the release's checkpoint ``state_dict``: exactly the frozen key names and shapes,
    our tensors (copied) under the keys our model holds, stride-0 filler of the frozen shape under the others."""
    ours = model.state_dict()
    used: dict[str, int] = {}
    fill = torch.full((1,), 0.01)
    state = {}
    for name, shape in official_keys():
        key = our_key(name)
        if key is None:
            state[name] = torch.tensor(0) if name.endswith("num_batches_tracked") else fill.expand(shape)
            continue
        assert key in ours, f"{name} -> {key}, which our model does not hold"
        assert tuple(ours[key].shape) == shape, (name, tuple(ours[key].shape), shape)
        used[key] = used.get(key, 0) + 1
        state[name] = ours[key].detach().clone()
    assert used == dict.fromkeys(ours, 1), "some key of our model is not mapped exactly once"
    assert [(k, tuple(v.shape)) for k, v in state.items()] == list(official_keys())
    return state


def official_features(model, paths: list[str], modal: str) -> np.ndarray:
    """Release test loader: PIL resize (ANTIALIAS = Lanczos) of the raw image, ToPILImage/Resize/ToTensor/
    Normalize, then (e(x) + e(fliplr(x))) / 2 L2-normalised."""
    arrays = [np.array(Image.open(p).resize((W, H), Image.LANCZOS)) for p in paths]
    transform = T.Compose([T.ToPILImage(), T.Resize((H, W)), T.ToTensor(),
                           T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    x = torch.stack([transform(a) for a in arrays])
    with torch.no_grad():
        feat = model.embed(x, modal)
        flipped = model.embed(x.index_select(3, torch.arange(x.size(3) - 1, -1, -1)), modal)
    feat = (feat + flipped) / 2
    return (feat / torch.norm(feat, p=2, dim=1, keepdim=True)).numpy()


# ----------------------------------------------------------------------------- cluster-memory references


def hcl_reference_update(features, inputs, targets, m):
    """CMhcl update per class on a copy: mean row with the batch mean, hard row with the sample
    least similar to the mean row as it was before the update; both re-normalised."""
    features = features.clone()
    k = features.shape[0] // 2
    x = F.normalize(inputs, dim=1)
    for c in sorted(set(targets.tolist())):
        members = x[targets == c]
        hard = members[torch.argmin(members @ features[c])]
        mean_row = m * features[c] + (1 - m) * members.mean(0)
        hard_row = m * features[c + k] + (1 - m) * hard
        features[c] = mean_row / mean_row.norm()
        features[c + k] = hard_row / hard_row.norm()
    return features


def hcl_reference_loss(features, inputs, targets, temp=TEMP):
    """0.5 * (CE(hard half) + relu(CE(mean half) - 0.2)) with x L2-normalised."""
    k = features.shape[0] // 2
    scores = F.normalize(inputs, dim=1) @ features.t() / temp  # [B, 2K]
    ce_mean = F.cross_entropy(scores[:, :k], targets)
    ce_hard = F.cross_entropy(scores[:, k:], targets)
    return 0.5 * (ce_hard + torch.relu(ce_mean - 0.2))
