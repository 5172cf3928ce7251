"""The test protocol on prepared data, for every registered dataset: each test setting of the registry
(:class:`rpnr.datasets.Setting`) compares its queries with its gallery, trial by trial, by its metric.

Result dicts (all metrics are fractions in [0, 1]):
``{"cmc": np.ndarray [20], "mAP": float, "mINP": float, "rank1", "rank5", "rank10", "rank20": float}``
plus ``"trial"`` for one trial, or ``"per_trial"`` (a list of one-trial dicts) for a mean.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rpnr.data.prepared import ImageSet, check_prepared, check_trial, load_array, load_set, load_side
from rpnr.datasets import Dataset, Setting, Side, get_dataset
from rpnr.evaluation import extract_features_uint8
from rpnr.results import METRICS

RANKS = (1, 5, 10, 20)


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
    return {k: 100.0 * float(result[k]) for k in METRICS}


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


def _settings(ds: Dataset, settings: Iterable[str | Setting] | None) -> list[Setting]:
    chosen = [s if isinstance(s, Setting) else ds.setting(s) for s in (ds.settings if settings is None else settings)]
    if len({s.name for s in chosen}) < len(chosen):
        raise ValueError(f"two of the settings share a name: {', '.join(s.name for s in chosen)}")
    return chosen


def _rows(root: str | os.PathLike, side: Side, trial: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows of the side's set, identity labels or None for the set's pids) of ``side`` in ``trial``."""
    index, labels = side.arrays(trial)
    rows = np.arange(size) if index is None else load_array(root, index)
    return rows, None if labels is None else load_array(root, labels)


def evaluate(model: nn.Module, dataset: str, root: str | os.PathLike, settings: Iterable[str | Setting] | None = None,
             trials: Iterable[int] | None = None, device: str | torch.device | None = None, batch_size: int = 64,
             progress: bool = False) -> dict[str, dict]:
    """The test of ``model`` on prepared ``dataset`` data: ``{setting: mean result dict with "per_trial"}`` over
    ``trials`` (default: every trial of the dataset) for each of ``settings`` (default: the final test's).

    Distance = -(q @ g.T) on float64 test embeddings (flip average, L2-normalised; visible stem for
    visible images, infrared stem for infrared ones); each test image is embedded once, however many
    settings and trials use it.
    """
    ds = get_dataset(dataset)
    check_prepared(root, dataset)
    device = _device(model, device)
    settings, trials = _settings(ds, settings), list(ds.trials if trials is None else trials)
    for trial in trials:
        check_trial(ds.trials, trial, ds.display)
    sets = {side.set: load_set(root, side.set) for s in settings for side in (s.query, s.gallery)}
    plan = {(s.name, t): [(side, *_rows(root, side, t, len(sets[side.set]))) for side in (s.query, s.gallery)]
            for s in settings for t in trials}  # [(side, rows, labels) of the query, of the gallery]
    used: dict[str, list[np.ndarray]] = {}  # set -> the rows each (setting, trial) reads
    for sides in plan.values():
        for side, rows, _ in sides:
            used.setdefault(side.set, []).append(rows)
    feats = {}
    for sides in plan.values():
        for side, _, _ in sides:
            if side.set not in feats:
                rows = np.unique(np.concatenate(used[side.set]))
                feats[side.set] = np.zeros((len(sets[side.set]), 2048))  # [N, 2048] float64; unused rows stay 0
                feats[side.set][rows] = _features(model, _Rows(sets[side.set].images, rows), side.modal, device,
                                                  batch_size, side.set, progress)
    out = {}
    for s in settings:
        per_trial = []
        for t in trials:
            (q_side, q_rows, q_labels), (g_side, g_rows, g_labels) = plan[s.name, t]
            q_set, g_set = sets[q_side.set], sets[g_side.set]
            distmat = -np.matmul(feats[q_side.set][q_rows], feats[g_side.set][g_rows].T)  # [Q, G]
            cmc, m_ap, m_inp = s.metric(distmat, q_set.pids[q_rows] if q_labels is None else q_labels,
                                        g_set.pids[g_rows] if g_labels is None else g_labels, q_set.cams[q_rows],
                                        g_set.cams[g_rows])
            per_trial.append({**summarize(cmc, m_ap, m_inp), "trial": t})
        out[s.name] = mean_results(per_trial)
    return out


@dataclass
class TrialSets:
    """The query and gallery images of one setting and trial."""

    query: ImageSet  # query images (memory-mapped when the whole set)
    gallery: ImageSet  # gallery images of the trial, in its official order
    setting: Setting
    title: str  # e.g. "SYSU-MM01 all-search, gallery of trial 0"

    def excluded(self, query: ImageSet) -> np.ndarray:
        """bool [Q, G]: True where a gallery image is ignored for a query of ``query`` (e.g. some of
        ``self.query``'s rows), by the rule its metric applies."""
        shape = (len(query), len(self.gallery))
        if self.setting.ignored is None:
            return np.zeros(shape, dtype=bool)
        rule = self.setting.ignored(query.pids[:, None], query.cams[:, None], self.gallery.pids[None, :],
                                    self.gallery.cams[None, :])
        return np.broadcast_to(rule, shape)


def trial_sets(dataset: str, root: str | os.PathLike, trial: int | None = None,
               setting: str | None = None) -> TrialSets:
    """The query and gallery images of ``setting`` (default: the per-epoch one, e.g. SYSU-MM01 all-search)
    in ``trial`` (default: the dataset's first)."""
    ds = get_dataset(dataset)
    check_prepared(root, dataset)
    trial = ds.trials[0] if trial is None else trial
    check_trial(ds.trials, trial, ds.display)
    s = ds.setting(setting or ds.epoch_setting)
    title = f"{s.title}, {'trial' if ds.model_per_trial else 'gallery of trial'} {trial}"
    return TrialSets(load_side(root, s.query, trial), load_side(root, s.gallery, trial), s, title)


def trial_checkpoint(template: str, trial: int) -> str:
    """The checkpoint path of ``trial``: ``{trial}`` in ``template`` replaced by the trial number."""
    return template.replace("{trial}", str(trial))
