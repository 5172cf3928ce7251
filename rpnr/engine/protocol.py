"""The test protocol on prepared data (DESIGN.md sections 5 and 6): each test setting of the registry scores its
queries against its gallery, trial by trial; the per-epoch test that selects model_best and the final test of a run.
Result dicts hold fractions: ``{"cmc" [20], "mAP", "mINP", "rank1", ...}`` plus ``"trial"`` or ``"per_trial"``.
"""

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rpnr.common.checkpoints import load_checkpoint
from rpnr.common.errors import CheckpointError, TrainingError
from rpnr.common.files import BEST, CHECKPOINT, sha256_file, write_json
from rpnr.data.prepared import ImageSet, Setting, Side, check_prepared, check_trial, load_array, load_set
from rpnr.data.published import METRICS
from rpnr.data.registry import get_dataset
from rpnr.engine.rank_lists import write_rank_list
from rpnr.engine.run_log import RunLog
from rpnr.engine.settings import TrainConfig
from rpnr.evaluation import extract_features_uint8
from rpnr.models import load_weights

RANKS = (1, 5, 10, 20)


class _Rows:
    """Rows ``index`` of an array, read slice by slice (a memory-mapped set stays on disk)."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        return self.base[self.index[key]]


def summarize(cmc: np.ndarray, m_ap: float, m_inp: float) -> dict:
    """One result dict; a CMC curve shorter than 20 keeps its last value."""
    cmc = np.asarray(cmc, dtype=np.float64)
    cmc = np.concatenate([cmc, np.full(max(0, RANKS[-1] - len(cmc)), cmc[-1])])  # [>= 20]
    return {"cmc": cmc, "mAP": float(m_ap), "mINP": float(m_inp), **{f"rank{k}": float(cmc[k - 1]) for k in RANKS}}


def mean_results(results: Sequence[dict]) -> dict:
    """The mean of one-trial result dicts, with ``"per_trial"``."""
    if not results:
        raise ValueError("no results to average")
    return {**summarize(np.mean([r["cmc"] for r in results], axis=0), np.mean([r["mAP"] for r in results]),
                        np.mean([r["mINP"] for r in results])), "per_trial": list(results)}


def to_percent(result: dict) -> dict:
    """The metrics in percent (plain floats), and each trial's under ``"per_trial"``."""
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
    index, labels = side.arrays(trial)
    rows = np.arange(len(images)) if index is None else load_array(root, index)
    return rows, images.pids[rows] if labels is None else load_array(root, labels)


def evaluate(model: nn.Module, dataset: str, root: str | os.PathLike, settings: Iterable[str | Setting] | None = None,
             trials: Iterable[int] | None = None, device: str | torch.device | None = None, batch_size: int = 64,
             progress: bool = False) -> dict[str, dict]:
    """``{setting: mean result with "per_trial"}`` of ``model`` over ``trials`` (default: all) for ``settings``
    (default: the final test's); each test image embedded once, distance -(q @ g.T) (DESIGN.md section 6)."""
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


def trial_checkpoint(template: str, trial: int) -> str:
    """The checkpoint path of ``trial``: ``{trial}`` in ``template`` replaced."""
    return template.replace("{trial}", str(trial))


def evaluate_epoch(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """The per-epoch test (the dataset's per-epoch setting and trial): Rank-1, mAP and mINP in percent."""
    ds = get_dataset(cfg.dataset)
    result = evaluate(model, cfg.dataset, cfg.data_dir, [ds.epoch_setting], [ds.epoch_trial(cfg.trial)], device,
                      cfg.feature_batch_size)[ds.epoch_setting]
    return {key: value for key, value in to_percent(result).items() if key in ("rank1", "mAP", "mINP")}


def final_test(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """The full test: every final setting on the run's trial or its first ``test_trials``, in percent."""
    ds = get_dataset(cfg.dataset)
    chosen = [cfg.trial] if ds.model_per_trial else list(ds.trials[:cfg.test_trials])
    return {name: to_percent(result) for name, result in
            evaluate(model, cfg.dataset, cfg.data_dir, None, chosen, device, cfg.feature_batch_size).items()}


def side_by_side(result: dict, title: str) -> list[str]:
    """A table: one row per setting and metric, the best and the last model in two columns."""
    heads = [f"{column} (epoch {result[column]['epoch']})" for column in ("best", "last")]
    rows = [(setting, metric.replace("rank", "Rank-"), *(f"{result[c][setting][metric]:.2f}" for c in ("best", "last")))
            for setting, value in result["best"].items() if isinstance(value, dict) and "rank1" in value
            for metric in METRICS]
    width = [max(len(r[i]) for r in rows) for i in range(2)] + [max(len(h), 6) for h in heads]
    lines = [title] + [f"{s:<{width[0]}}  {m:<{width[1]}}  {b:>{width[2]}}  {last:>{width[3]}}"
                       for s, m, b, last in [("", "", *heads), *rows]]
    return lines + ["best = the epoch with the highest per-epoch test Rank-1 (the release's protocol, optimistic); "
                    "last = the final epoch (no choice made on the test set)"]


def test_best_and_last(net: nn.Module, cfg: TrainConfig, log: RunLog, device: torch.device) -> dict:
    """Rank 0: the final test of the last model (in memory) beside model_best (selected on the test set,
    the release's quirk); test.json, ranks.png and the log lines; ``{"best": ..., "last": ...}``."""
    folder = Path(cfg.logs_dir)
    files = {name: {"path": str(folder / name), "sha256": sha256_file(folder / name)} for name in (CHECKPOINT, BEST)}
    tested = final_test(net, cfg, device)
    try:
        best_ckpt = load_checkpoint(folder / BEST)
        load_weights(net, folder / BEST, best_ckpt)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    epoch = int(best_ckpt["epoch"])
    best = tested if epoch == cfg.epochs else final_test(net, cfg, device)
    results = {"best": {"epoch": epoch, "checkpoint": files[BEST], **best},
               "last": {"epoch": cfg.epochs, "checkpoint": files[CHECKPOINT], **tested}}
    write_rank_list(net, cfg.dataset, cfg.data_dir, folder / "ranks.png",
                    trial=get_dataset(cfg.dataset).epoch_trial(cfg.trial), device=device,
                    batch_size=cfg.feature_batch_size)
    log.print(f"best model: epoch {epoch}, Rank-1 {float(best_ckpt['rank1']):.2f}% (selected on the test set, "
              f"as the official release does)")
    log.print(f"last model: epoch {cfg.epochs} (the final epoch: no choice made on the test set)")
    for line in side_by_side(results, f"final test of {cfg.dataset} (percent)"):
        log.print(line)
    write_json(folder / "test.json", results)
    return results
