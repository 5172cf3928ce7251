"""Test protocols on prepared data: SYSU-MM01 (one query set, ten galleries), RegDB (both directions)
and LLCM (both directions, ten galleries each).

Result dicts (all metrics are fractions in [0, 1]):
``{"cmc": np.ndarray [20], "mAP": float, "mINP": float, "rank1", "rank5", "rank10", "rank20": float}``
plus ``"trial"`` for one trial, or ``"per_trial"`` (a list of one-trial dicts) for a mean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rpnr.data.prepared import (
    LLCM_MODALITIES,
    ImageSet,
    check_prepared,
    llcm_gallery_index,
    load_set,
    regdb_trial,
    sysu_gallery_index,
)
from rpnr.evaluation import eval_llcm, eval_regdb, eval_sysu, extract_features_uint8, llcm_ignored, sysu_ignored

RANKS = (1, 5, 10, 20)
DIRECTIONS = ("visible_to_thermal", "thermal_to_visible")
# LLCM direction -> (query modality, gallery modality); the gallery is sampled per trial
LLCM_DIRECTIONS = {"visible_to_infrared": ("visible", "infrared"), "infrared_to_visible": ("infrared", "visible")}
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


class _Rows:
    """Rows ``index`` of an array, read lazily slice by slice (keeps a memory-mapped set on disk)."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        return self.base[self.index[key]]


def summarize(cmc: np.ndarray, m_ap: float, m_inp: float) -> dict:
    """One result dict from a CMC curve, mAP and mINP.

    A curve shorter than 20 (a gallery of fewer than 20 images) is extended with its last value.
    """
    cmc = np.asarray(cmc, dtype=np.float64)
    cmc = np.concatenate([cmc, np.full(max(0, RANKS[-1] - len(cmc)), cmc[-1])])  # [>= 20]
    out = {"cmc": cmc, "mAP": float(m_ap), "mINP": float(m_inp)}
    for k in RANKS:
        out[f"rank{k}"] = float(cmc[k - 1])
    return out


def mean_results(results: Sequence[dict]) -> dict:
    """The mean of one-trial result dicts (CMC, mAP and mINP averaged), with ``"per_trial"``."""
    if not results:
        raise ValueError("no results to average")
    mean = summarize(np.mean([r["cmc"] for r in results], axis=0), np.mean([r["mAP"] for r in results]),
                     np.mean([r["mINP"] for r in results]))
    mean["per_trial"] = list(results)
    return mean


def to_percent(result: dict) -> dict:
    """``{"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}`` in percent (plain floats)."""
    return {k: 100.0 * float(result[k]) for k in METRIC_KEYS}


def format_result(result: dict, label: str = "") -> str:
    """One line in the paper's format: ``label Rank-1: 65.49% | Rank-5: ... | mAP: ... | mINP: ...``."""
    text = " | ".join([f"Rank-{k}: {result[f'rank{k}']:.2%}" for k in RANKS]
                      + [f"mAP: {result['mAP']:.2%}", f"mINP: {result['mINP']:.2%}"])
    return f"{label} {text}" if label else text


def _features(model: nn.Module, images, modal: str, device: torch.device, batch_size: int,
              desc: str, progress: bool) -> np.ndarray:
    """Test embeddings (flip average, L2-normalised) of uint8 images -> float64 [N, 2048].

    Computed in float32, held in float64 as the release's test scripts do (their feature arrays are
    ``np.zeros((n, 2048))``), so distances, and the order of near ties, are the release's.
    """
    with tqdm(total=len(images), desc=desc, unit="img", disable=None if progress else True,
              dynamic_ncols=True) as bar:
        feats = extract_features_uint8(model, images, modal, batch_size=batch_size, flip=True, normalize=True,
                                       device=device, progress=bar.update)
    return feats.cpu().numpy().astype(np.float64)


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    return device


def evaluate_sysu(model: nn.Module, root: str | os.PathLike, mode: str = "all", trials: Iterable[int] = range(10),
                  device: str | torch.device | None = None, batch_size: int = 64, progress: bool = False) -> dict:
    """SYSU-MM01 ``mode`` ("all"|"indoor") search over the galleries of ``trials``.

    IR queries (infrared stem) against RGB galleries (visible stem); distance = -(q @ g.T) as
    the release. Query features are computed once; each gallery image once, however many
    trials use it. Returns the mean result dict with ``"per_trial"`` (each with ``"trial"``).
    """
    check_prepared(root, "sysu")
    device = _device(model, device)
    trials = list(trials)
    indices = {t: sysu_gallery_index(root, mode, t) for t in trials}
    query, gallery = load_set(root, "query"), load_set(root, "gallery")
    needed = np.unique(np.concatenate(list(indices.values())))  # gallery rows used by these trials
    q_feat = _features(model, query.images, "infrared", device, batch_size, "query", progress)  # [Q, 2048]
    g_all = _features(model, _Rows(gallery.images, needed), "visible", device, batch_size, "gallery",
                      progress)  # [G_used, 2048]
    per_trial = []
    for t, idx in indices.items():
        g_feat = g_all[np.searchsorted(needed, idx)]  # [G_t, 2048] in the trial's official order
        distmat = -np.matmul(q_feat, g_feat.T)  # [Q, G_t]
        cmc, m_ap, m_inp = eval_sysu(distmat, query.pids, gallery.pids[idx], query.cams, gallery.cams[idx])
        per_trial.append({**summarize(cmc, m_ap, m_inp), "trial": t})
    return mean_results(per_trial)


def evaluate_regdb_directions(model: nn.Module, root: str | os.PathLike, trial: int = 1,
                              device: str | torch.device | None = None, batch_size: int = 64,
                              progress: bool = False) -> dict:
    """Both RegDB directions of one trial: ``{"visible_to_thermal": result, "thermal_to_visible": result}``.

    Each test image is embedded once (visible stem for visible, infrared stem for thermal);
    each result dict carries ``"trial"``.
    """
    check_prepared(root, "regdb")
    device = _device(model, device)
    visible = regdb_trial(root, "test", "visible", trial)
    thermal = regdb_trial(root, "test", "thermal", trial)
    f_vis = _features(model, visible.images, "visible", device, batch_size, "visible", progress)  # [Nv, 2048]
    f_th = _features(model, thermal.images, "infrared", device, batch_size, "thermal", progress)  # [Nt, 2048]
    out = {}
    for direction, (q, g, q_pids, g_pids) in {
        "visible_to_thermal": (f_vis, f_th, visible.pids, thermal.pids),
        "thermal_to_visible": (f_th, f_vis, thermal.pids, visible.pids),
    }.items():
        distmat = -np.matmul(q, g.T)  # [Q, G]
        cmc, m_ap, m_inp = eval_regdb(distmat, q_pids, g_pids)
        out[direction] = {**summarize(cmc, m_ap, m_inp), "trial": trial}
    return out


def evaluate_regdb(model: nn.Module, root: str | os.PathLike, trial: int = 1,
                   direction: str = "visible_to_thermal", device: str | torch.device | None = None,
                   batch_size: int = 64, progress: bool = False) -> dict:
    """One RegDB direction ("visible_to_thermal"|"thermal_to_visible") of one trial: a result dict
    with ``"trial"``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    return evaluate_regdb_directions(model, root, trial, device, batch_size, progress)[direction]


def evaluate_llcm_directions(model: nn.Module, root: str | os.PathLike, trials: Iterable[int] = range(10),
                             device: str | torch.device | None = None, batch_size: int = 64, progress: bool = False,
                             v2i_sampled_infrared_queries: bool = False) -> dict:
    """LLCM over the galleries of ``trials``: ``{"visible_to_infrared": mean, "infrared_to_visible": mean}``
    (mean result dicts with ``"per_trial"``, each with ``"trial"``).

    The LLCM release's protocol (DEEN/data_manager.py, eval_metrics.eval_llcm): every test image of
    the query modality is a query; the gallery of trial t holds one image per test identity and
    camera of the other modality (``random.seed(t)``, stored by prepare_llcm.py); distance = -(q @ g.T);
    gallery images of the query's identity and camera are ignored. visible_to_infrared takes every
    visible image as a query against the sampled infrared gallery (as DMDL and CEIL report it);
    infrared_to_visible every infrared image against the sampled visible gallery (the release's
    default, ``test_mode = [1, 2]``).

    ``v2i_sampled_infrared_queries=True`` computes visible_to_infrared as the LLCM release's
    ``test.py`` does with ``test_mode = [2, 1]``: the roles are swapped, the sampled infrared images
    of each trial are the queries and every visible test image is the gallery. Supervised papers
    that ran that script report this variant.

    Each test image is embedded once (visible stem for visible, infrared stem for infrared images),
    however many trials and directions use it.
    """
    return _llcm_results(model, root, tuple(LLCM_DIRECTIONS), trials, device, batch_size, progress,
                         v2i_sampled_infrared_queries)


def evaluate_llcm(model: nn.Module, root: str | os.PathLike, direction: str = "visible_to_infrared",
                  trials: Iterable[int] = range(10), device: str | torch.device | None = None, batch_size: int = 64,
                  progress: bool = False, v2i_sampled_infrared_queries: bool = False) -> dict:
    """One LLCM direction ("visible_to_infrared"|"infrared_to_visible") over the galleries of ``trials``:
    the mean result dict with ``"per_trial"`` (see :func:`evaluate_llcm_directions`; only the images
    this direction uses are embedded)."""
    return _llcm_results(model, root, (direction,), trials, device, batch_size, progress,
                         v2i_sampled_infrared_queries)[direction]


def _llcm_results(model: nn.Module, root: str | os.PathLike, directions: Sequence[str], trials: Iterable[int],
                  device: str | torch.device | None, batch_size: int, progress: bool,
                  v2i_sampled_infrared_queries: bool) -> dict:
    """``{direction: mean result}`` for the LLCM ``directions``, each test image embedded once."""
    for direction in directions:
        if direction not in LLCM_DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(LLCM_DIRECTIONS)}, got {direction!r}")
    check_prepared(root, "llcm")
    device = _device(model, device)
    trials = list(trials)
    sets = {m: load_set(root, f"test_{m}") for m in LLCM_MODALITIES}
    galleries = {(m, t): llcm_gallery_index(root, m, t) for m in LLCM_MODALITIES for t in trials}
    needed: dict[str, list[np.ndarray]] = {m: [] for m in LLCM_MODALITIES}  # rows each direction uses
    for direction in directions:
        q_mod, g_mod = LLCM_DIRECTIONS[direction]
        needed[q_mod].append(np.arange(len(sets[q_mod])))
        needed[g_mod].extend(galleries[g_mod, t] for t in trials)
    feats = {}
    for modality, parts in needed.items():
        feats[modality] = np.zeros((len(sets[modality]), 2048), dtype=np.float64)  # [N, 2048]; unused rows stay 0
        if parts:
            rows = np.unique(np.concatenate(parts))
            feats[modality][rows] = _features(model, _Rows(sets[modality].images, rows), modality, device,
                                              batch_size, f"{modality} test", progress)
    out = {}
    for direction in directions:
        q_mod, g_mod = LLCM_DIRECTIONS[direction]
        query = sets[q_mod]
        per_trial = []
        for t in trials:
            idx = galleries[g_mod, t]  # [G_t] rows of the gallery modality's test set, in the release's order
            g_pids, g_cams = sets[g_mod].pids[idx], sets[g_mod].cams[idx]
            if direction == "visible_to_infrared" and v2i_sampled_infrared_queries:
                distmat = -np.matmul(feats[g_mod][idx], feats[q_mod].T)  # [G_t, N_vis]: sampled IR are the queries
                cmc, m_ap, m_inp = eval_llcm(distmat, g_pids, query.pids, g_cams, query.cams)
            else:
                distmat = -np.matmul(feats[q_mod], feats[g_mod][idx].T)  # [N_q, G_t]
                cmc, m_ap, m_inp = eval_llcm(distmat, query.pids, g_pids, query.cams, g_cams)
            per_trial.append({**summarize(cmc, m_ap, m_inp), "trial": t})
        out[direction] = mean_results(per_trial)
    return out


def trial_checkpoint(template: str, trial: int) -> str:
    """The checkpoint path of ``trial``: ``{trial}`` in ``template`` replaced by the trial number."""
    return template.replace("{trial}", str(trial))


# ----------------------------------------------------------------------------- one trial's query and gallery


@dataclass
class TrialSets:
    """The query and gallery images of one test trial, with the stem each set goes through."""

    query: ImageSet  # query images (SYSU: memory-mapped)
    gallery: ImageSet  # gallery images of the trial, in its official order
    query_modal: str  # "visible" | "infrared"
    gallery_modal: str
    title: str  # e.g. "SYSU-MM01 all-search, gallery of trial 0"
    # the metric's gallery rule (rpnr.evaluation.sysu_ignored / llcm_ignored); None: every image compared
    ignored: Callable | None = None

    def excluded(self, q_cams: np.ndarray, g_cams: np.ndarray, q_pids: np.ndarray | None = None,
                 g_pids: np.ndarray | None = None) -> np.ndarray:
        """bool [Q, G]: True where a gallery image is ignored for a query, by the rule the metric applies
        (LLCM's rule needs the pids)."""
        q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
        shape = (len(q_cams), len(g_cams))
        if self.ignored is None:
            return np.zeros(shape, dtype=bool)
        q_pids = None if q_pids is None else np.asarray(q_pids)[:, None]
        g_pids = None if g_pids is None else np.asarray(g_pids)[None, :]
        return np.broadcast_to(self.ignored(q_pids, q_cams[:, None], g_pids, g_cams[None, :]), shape)


def sysu_trial_sets(root: str | os.PathLike, mode: str = "all", trial: int = 0) -> TrialSets:
    """SYSU-MM01 IR queries against the RGB gallery of ``mode``/``trial`` (gallery camera 2 skipped for
    queries of camera 3, as ``eval_sysu``)."""
    check_prepared(root, "sysu")
    index = sysu_gallery_index(root, mode, trial)
    return TrialSets(load_set(root, "query"), load_set(root, "gallery").subset(index), "infrared", "visible",
                     f"SYSU-MM01 {mode}-search, gallery of trial {trial}", ignored=sysu_ignored)


def regdb_trial_sets(root: str | os.PathLike, trial: int = 1, direction: str = "visible_to_thermal") -> TrialSets:
    """The RegDB test images of ``trial`` as query and gallery of ``direction``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    check_prepared(root, "regdb")
    visible = regdb_trial(root, "test", "visible", trial)
    thermal = regdb_trial(root, "test", "thermal", trial)
    label = direction.replace("_", " ")
    if direction == "visible_to_thermal":
        return TrialSets(visible, thermal, "visible", "infrared", f"RegDB {label}, trial {trial}")
    return TrialSets(thermal, visible, "infrared", "visible", f"RegDB {label}, trial {trial}")


def llcm_trial_sets(root: str | os.PathLike, trial: int = 0, direction: str = "visible_to_infrared") -> TrialSets:
    """Every LLCM test image of the query modality of ``direction`` against the sampled gallery of ``trial``
    in the other modality (gallery images of the query's identity and camera skipped, as ``eval_llcm``)."""
    if direction not in LLCM_DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(LLCM_DIRECTIONS)}, got {direction!r}")
    check_prepared(root, "llcm")
    q_mod, g_mod = LLCM_DIRECTIONS[direction]
    gallery = load_set(root, f"test_{g_mod}").subset(llcm_gallery_index(root, g_mod, trial))
    return TrialSets(load_set(root, f"test_{q_mod}"), gallery, q_mod, g_mod,
                     f"LLCM {direction.replace('_', ' ')}, gallery of trial {trial}", ignored=llcm_ignored)


# the query/gallery pair that per-epoch evaluation and rank lists use, and each dataset's first trial
TRIAL_SETS: dict[str, Callable[[str | os.PathLike, int], TrialSets]] = {
    "sysu": lambda root, trial: sysu_trial_sets(root, "all", trial),
    "regdb": lambda root, trial: regdb_trial_sets(root, trial, "visible_to_thermal"),
    "llcm": lambda root, trial: llcm_trial_sets(root, trial, "visible_to_infrared"),
}
FIRST_TRIAL = {"sysu": 0, "regdb": 1, "llcm": 0}


def epoch_test_trial(dataset: str, run_trial: int) -> int:
    """The test trial that a training run on ``run_trial`` evaluates every epoch (and draws its rank list
    on): the gallery of trial 0 for SYSU and LLCM whatever the run, RegDB the run's own trial."""
    if dataset not in FIRST_TRIAL:
        raise ValueError(f"unknown dataset {dataset!r} (choose from {', '.join(FIRST_TRIAL)})")
    return run_trial if dataset == "regdb" else FIRST_TRIAL[dataset]


def trial_sets(dataset: str, root: str | os.PathLike, trial: int | None = None) -> TrialSets:
    """The main query/gallery pair of ``dataset`` (SYSU all-search, RegDB visible-to-thermal, LLCM
    visible-to-infrared) for ``trial`` (default: the dataset's first trial)."""
    if dataset not in TRIAL_SETS:
        raise ValueError(f"unknown dataset {dataset!r} (choose from {', '.join(TRIAL_SETS)})")
    return TRIAL_SETS[dataset](root, FIRST_TRIAL[dataset] if trial is None else trial)
