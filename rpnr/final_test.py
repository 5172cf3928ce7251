"""The tests of a training run (DESIGN.md section 5): the per-epoch test that selects model_best (the
release's protocol, on the test set) and the final test of the best beside the last epoch's model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rpnr.checkpoint import CheckpointError, load_checkpoint
from rpnr.config import TrainConfig, TrainingError
from rpnr.datasets import get_dataset
from rpnr.files import sha256_file, write_json
from rpnr.models import load_weights
from rpnr.protocols import METRICS, evaluate, to_percent
from rpnr.rank_list import write_rank_list
from rpnr.run_folder import BEST, CHECKPOINT
from rpnr.run_log import RunLog


def evaluate_epoch(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """The per-epoch test: the dataset's per-epoch setting (e.g. SYSU-MM01 all-search against the gallery of
    trial 0, RegDB visible to thermal of the run's trial); {"rank1", "mAP", "mINP"} in percent."""
    ds = get_dataset(cfg.dataset)
    result = evaluate(model, cfg.dataset, cfg.data_dir, [ds.epoch_setting], [ds.epoch_trial(cfg.trial)], device,
                      cfg.feature_batch_size)[ds.epoch_setting]
    return {key: value for key, value in to_percent(result).items() if key in ("rank1", "mAP", "mINP")}


def final_test(model: nn.Module, cfg: TrainConfig, device: torch.device) -> dict:
    """The full test of a model: every final setting, on the run's own trial (one model per trial) or over the
    first ``cfg.test_trials`` trials; {setting: {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "per_trial":
    [{"trial", "rank1", ...}, ...]}} in percent (the mean over trials beside each trial's own)."""
    ds = get_dataset(cfg.dataset)
    chosen = [cfg.trial] if ds.model_per_trial else list(ds.trials[:cfg.test_trials])
    return {name: to_percent(result) for name, result in
            evaluate(model, cfg.dataset, cfg.data_dir, None, chosen, device, cfg.feature_batch_size).items()}


def side_by_side(result: dict, title: str) -> list[str]:
    """Lines of a table: one row per setting and metric, the best and the last model of a run in two columns."""
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
    """Rank 0: the full test of the last epoch's model (in memory) beside model_best (loaded; official quirk:
    selected on the test set), test.json and ranks.png of the best. Returns ``{"best": {"epoch", "checkpoint",
    settings...}, "last": {...}}``; "checkpoint" is ``{"path", "sha256"}`` of the file holding that model."""
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
