"""Seeding, and states of the global generators that load with ``weights_only=True``."""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the release's samplers use the global numpy stream
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """The current states of the python, numpy, torch CPU (and CUDA, if present) generators."""
    py_version, py_internal, py_gauss = random.getstate()
    np_key, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "python": {"version": int(py_version), "state": [int(v) for v in py_internal],
                   "gauss_next": None if py_gauss is None else float(py_gauss)},
        "numpy": {"key": str(np_key), "state": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict) -> None:
    """Restore the generators from :func:`capture_rng_state`'s dictionary."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = np.asarray(npy["state"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((npy["key"], keys, int(npy["pos"]), int(npy["has_gauss"]),  # noqa: NPY002
                         float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda_states])
