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
from rpnr.datasets import Setting, Side, get_dataset
from rpnr.evaluation import extract_features_uint8

RANKS = (1, 5, 10, 20)
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")  # of every result, in this order


class _Rows:
    """Rows ``index`` of an array, read lazily slice by slice (keeps a memory-mapped set on disk)."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        return self.base[self.index[key]]


def summarize(cmc: np.ndarray, m_ap: float, m_inp: float) -> dict:
    """One result dict from a CMC curve, mAP and mINP; a curve shorter than 20 (a gallery of fewer than 20
    images) is extended with its last value."""
    cmc = np.asarray(cmc, dtype=np.float64)
    cmc = np.concatenate([cmc, np.full(max(0, RANKS[-1] - len(cmc)), cmc[-1])])  # [>= 20]
    return {"cmc": cmc, "mAP": float(m_ap), "mINP": float(m_inp), **{f"rank{k}": float(cmc[k - 1]) for k in RANKS}}


def mean_results(results: Sequence[dict]) -> dict:
    """The mean of one-trial result dicts (CMC, mAP and mINP averaged), with ``"per_trial"``."""
    if not results:
        raise ValueError("no results to average")
    return {**summarize(np.mean([r["cmc"] for r in results], axis=0), np.mean([r["mAP"] for r in results]),
                        np.mean([r["mINP"] for r in results])), "per_trial": list(results)}


def to_percent(result: dict) -> dict:
    """``{"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}`` in percent (plain floats), and for a mean over
    trials ``"per_trial"``: ``[{"trial", "rank1", ...}, ...]``, each trial's own, in percent too."""
    percent = {k: 100.0 * float(result[k]) for k in METRICS}
    if "per_trial" in result:
        percent["per_trial"] = [{"trial": t["trial"], **to_percent(t)} for t in result["per_trial"]]
    return percent


def format_result(result: dict, label: str = "") -> str:
    """One line in the paper's format: ``label Rank-1: 65.49% | Rank-5: ... | mAP: ... | mINP: ...``."""
    text = " | ".join([f"Rank-{k}: {result[f'rank{k}']:.2%}" for k in RANKS]
                      + [f"mAP: {result['mAP']:.2%}", f"mINP: {result['mINP']:.2%}"])
    return f"{label} {text}" if label else text


def _rows(root: str | os.PathLike, side: Side, trial: int, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the side's set ``images``, their identity labels: the side's own or the set's pids) in ``trial``."""
    index, labels = side.arrays(trial)
    rows = np.arange(len(images)) if index is None else load_array(root, index)
    return rows, images.pids[rows] if labels is None else load_array(root, labels)


def evaluate(model: nn.Module, dataset: str, root: str | os.PathLike, settings: Iterable[str | Setting] | None = None,
             trials: Iterable[int] | None = None, device: str | torch.device | None = None, batch_size: int = 64,
             progress: bool = False) -> dict[str, dict]:
    """The test of ``model`` on prepared ``dataset`` data: ``{setting: mean result dict with "per_trial"}`` over
    ``trials`` (default: every trial of the dataset) for each of ``settings`` (default: the final test's), as
    DESIGN.md section 6 says: distance = -(q @ g.T) on the test embeddings, each test image embedded once."""
    ds = get_dataset(dataset)
    check_prepared(root, dataset)
    if device is not None:
        model.to(torch.device(device))
    device = next(model.parameters()).device if device is None else torch.device(device)
    settings = [s if isinstance(s, Setting) else ds.setting(s) for s in (ds.settings if settings is None else settings)]
    if len({s.name for s in settings}) < len(settings):
        raise ValueError(f"two of the settings share a name: {', '.join(s.name for s in settings)}")
    trials = list(ds.trials if trials is None else trials)
    for trial in trials:
        check_trial(ds.trials, trial, ds.display)
    sets = {side.set: load_set(root, side.set) for s in settings for side in (s.query, s.gallery)}
    plan = {(s.name, t): [(side, *_rows(root, side, t, sets[side.set])) for side in (s.query, s.gallery)]
            for s in settings for t in trials}  # [(side, rows, labels) of the query, of the gallery]
    used: dict[str, tuple[Side, list[np.ndarray]]] = {}  # set -> (its first side, the rows each setting/trial reads)
    for sides in plan.values():
        for side, rows, _ in sides:
            used.setdefault(side.set, (side, []))[1].append(rows)
    feats = {}  # set -> test embeddings (flip average, L2-normalised) [N, 2048]; unused rows stay 0
    for name, (side, reads) in used.items():
        rows = np.unique(np.concatenate(reads))
        # computed in float32, held in float64 as the release's test scripts do (their feature arrays are
        # np.zeros((n, 2048))), so distances, and the order of near ties, are the release's
        feats[name] = np.zeros((len(sets[name]), 2048))
        with tqdm(total=len(rows), desc=name, unit="img", disable=None if progress else True,
                  dynamic_ncols=True) as bar:
            feats[name][rows] = extract_features_uint8(model, _Rows(sets[name].images, rows), side.modal,
                                                       batch_size=batch_size, device=device,
                                                       progress=bar.update).cpu().numpy()
    out = {}
    for s in settings:
        per_trial = []
        for t in trials:
            (q_side, q_rows, q_labels), (g_side, g_rows, g_labels) = plan[s.name, t]
            distmat = -np.matmul(feats[q_side.set][q_rows], feats[g_side.set][g_rows].T)  # [Q, G]
            cmc, m_ap, m_inp = s.metric(distmat, q_labels, g_labels, sets[q_side.set].cams[q_rows],
                                        sets[g_side.set].cams[g_rows])
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
