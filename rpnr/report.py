"""From runs to a table (DESIGN.md section 12): the finished runs under some folders, grouped by dataset, stage and
recipe (:func:`rpnr.config.recipe`), each final-test metric as mean and sample sd over a group's runs beside the
spread over gallery trials and the release's published number.

A run folder holds ``run.json``; it is finished when it also holds a readable ``test.json``
(``{"best": {...}, "last": {...}}``, each with the metrics of every test setting in percent and their
``per_trial`` list).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import textwrap
from pathlib import Path

from rpnr.config import recipe
from rpnr.datasets import registry
from rpnr.protocols import METRICS
from rpnr.run_folder import RUN_JSON

TEST_JSON = "test.json"
MODELS = ("best", "last")
METRIC_LABEL = {m: m.replace("rank", "Rank-") for m in METRICS}  # "rank1" -> "Rank-1"
COLUMNS = ("dataset", "stage", "settings", "test_setting", "model", "metric", "runs", "mean", "sd", "trial_sd",
           "published", "published_sd")
QUALITY = ("purity", "ari", "nmi")  # pseudo-label quality of the last epoch (metrics.json), per modality


class ReportError(RuntimeError):
    """Nothing to report (a missing path, no run folder); one-line message."""


@dataclasses.dataclass
class Run:
    """A finished run: its folder, run.json and test.json."""

    path: Path
    record: dict
    test: dict

    @property
    def dataset(self) -> str:
        return self.record["args"]["dataset"]

    @property
    def stage(self) -> str:
        return self.record["args"]["stage"]

    def quality(self) -> dict:
        """The last epoch's pseudo-label quality (``purity_rgb``, ``ari_ir``, ...) that metrics.json holds."""
        try:
            last = json.loads((self.path / "metrics.json").read_text())[-1]
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            return {}
        return {k: v for k, v in last.items() if k.rsplit("_", 1)[0] in QUALITY and isinstance(v, (int, float))}


@dataclasses.dataclass
class Group:
    """The finished runs of one dataset, stage and recipe; ``settings``: the recipe entries in which it differs
    from the other groups of its dataset and stage (``name=value;...``)."""

    dataset: str
    stage: str
    recipe: dict
    runs: list[Run]
    settings: str = ""

    def notes(self) -> list[str]:
        """Where the runs' code or libraries differ (run.json's "git" and "versions")."""
        out = []
        commits = sorted({(r.record.get("git") or {}).get("commit") or "unknown" for r in self.runs})
        if len(commits) > 1:
            out.append(f"runs from {len(commits)} commits ({', '.join(c[:10] for c in commits)})")
        versions = [r.record.get("versions") or {} for r in self.runs]
        differ = sorted({k for v in versions for k in v if len({str(w.get(k)) for w in versions}) > 1})
        if differ:
            out.append("runs with different library versions: " + ", ".join(
                f"{k} {'/'.join(sorted({str(w.get(k)) for w in versions}))}" for k in differ))
        return out


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    """A JSON object holding an object under each of ``keys``; ValueError otherwise."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict) or not all(isinstance(value.get(k), dict) for k in keys):
        raise ValueError(f"not a JSON object with {', '.join(keys)}")
    return value


def _check_metrics(test: dict) -> None:
    """ValueError unless every test setting of both models holds every metric as a number (and its trials)."""
    for model in MODELS:
        for setting, result in test[model].items():
            if isinstance(result, dict) and "rank1" in result:
                trials = result.get("per_trial", [])
                if not all(isinstance(r.get(m), (int, float)) for r in (result, *trials) for m in METRICS):
                    raise ValueError(f"{model} {setting}: a metric is missing")


def find_runs(paths: list[str | os.PathLike]) -> tuple[list[Run], list[str]]:
    """The finished runs in the run folders under ``paths`` (sorted by path) and one line for each run folder left
    out (unfinished, damaged). A missing path or no run folder at all is a :class:`ReportError`."""
    folders = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path} does not exist")
        found = sorted(Path(root) for root, _, files in os.walk(path) if RUN_JSON in files)
        if not found:
            raise ReportError(f"{path} holds no run folder (no {RUN_JSON} under it)")
        folders += found
    runs, skipped = [], []
    for folder in dict.fromkeys(folders):
        try:
            record = _read_json(folder / RUN_JSON, ("args",))
            if not {"dataset", "stage"} <= set(record["args"]):
                raise ValueError("no dataset or stage")
        except (OSError, ValueError):
            skipped.append(f"skipped: {folder / RUN_JSON} is damaged (not the run.json train.py writes)")
            continue
        if not (folder / TEST_JSON).is_file():
            skipped.append(f"unfinished: {folder} (no {TEST_JSON}: the run did not end; not averaged)")
            continue
        try:
            test = _read_json(folder / TEST_JSON, MODELS)
            _check_metrics(test)
        except (OSError, ValueError):
            skipped.append(f"skipped: {folder / TEST_JSON} is damaged (not the test.json train.py writes)")
            continue
        runs.append(Run(folder, record, test))
    return runs, skipped


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of one dataset, stage and recipe, in the order first met, each labelled by its differing settings."""
    groups: dict[str, Group] = {}
    for run in runs:
        rec = recipe(run.record["args"])
        key = json.dumps([run.dataset, run.stage, rec], sort_keys=True)
        groups.setdefault(key, Group(run.dataset, run.stage, rec, [])).runs.append(run)
    for group in groups.values():
        peers = [g for g in groups.values() if (g.dataset, g.stage) == (group.dataset, group.stage)]
        differ = [k for k in group.recipe if len({json.dumps(g.recipe.get(k)) for g in peers}) > 1]
        group.settings = ";".join(f"{k}={json.dumps(group.recipe[k])}" for k in differ)
    return list(groups.values())


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample sd (ddof 1; None for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _setting_names(group: Group) -> list[str]:
    """The test settings the group's runs hold, in stored order."""
    names = [k for k, v in group.runs[0].test["best"].items() if isinstance(v, dict) and "rank1" in v]
    return [n for n in names if all(n in r.test[m] for r in group.runs for m in MODELS)]


def group_rows(group: Group) -> list[dict]:
    """One row per test setting, model and metric (the CSV's :data:`COLUMNS`); published numbers for the best
    model of stage 2 where the dataset's registry entry holds them."""
    ds = registry().get(group.dataset)
    published = ds.published_results if ds is not None and group.stage == "rpnr" else None
    rows = []
    for setting in _setting_names(group):
        for model in MODELS:
            for metric in METRICS:
                mean, sd = _mean_sd([float(r.test[model][setting][metric]) for r in group.runs])
                spreads = [_mean_sd([float(t[metric]) for t in r.test[model][setting].get("per_trial", [])])[1]
                           for r in group.runs if len(r.test[model][setting].get("per_trial", [])) > 1]
                pub = published.results.get(setting, {}).get(metric) if published and model == "best" else None
                rows.append({"dataset": group.dataset, "stage": group.stage, "settings": group.settings,
                             "test_setting": setting, "model": model, "metric": metric, "runs": len(group.runs),
                             "mean": mean, "sd": sd, "trial_sd": statistics.fmean(spreads) if spreads else None,
                             "published": pub[0] if pub else None, "published_sd": pub[1] if pub else None})
    return rows


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pm(mean: float | None, sd: float | None) -> str:
    return "" if mean is None else _num(mean) + (f" ± {_num(sd)}" if sd is not None else "")


def quality_line(group: Group) -> str:
    """The mean over the group's runs of the last epoch's pseudo-label quality, visible/infrared ("" without it)."""
    values: dict[str, list[float]] = {}
    for run in group.runs:
        for key, value in run.quality().items():
            values.setdefault(key, []).append(float(value))
    mean = {k: f"{statistics.fmean(v):.3f}" for k, v in values.items()}
    parts = [f"{'purity' if q == 'purity' else q.upper()} {mean.get(f'{q}_rgb', '-')}/{mean.get(f'{q}_ir', '-')}"
             for q in QUALITY if f"{q}_rgb" in mean or f"{q}_ir" in mean]
    return f"pseudo labels, last epoch, visible/infrared: {', '.join(parts)}" if parts else ""


def _title(group: Group) -> str:
    ds = registry().get(group.dataset)
    stage = "stage 1 (baseline)" if group.stage == "baseline" else f"stage 2 ({group.stage})"
    return f"{ds.display if ds else group.dataset} {stage}: {len(group.runs)} run(s)" + (
        f"; settings {group.settings.replace(';', ', ')}" if group.settings else "")


def text_table(groups: list[Group]) -> list[str]:
    """The terminal table (at most 100 columns): per group, each test setting and metric with the best and the
    last model's mean ± sd over runs, the sd over gallery trials and the published number."""
    lines = []
    head = f"  {'test setting':<20} {'metric':<7} {'best':>15} {'trial sd':>8} {'last':>15} {'published':>16}"
    for group in groups:
        lines += ["", _title(group), *(f"  note: {n}" for n in group.notes())]
        quality = quality_line(group)
        lines += [f"  {quality}"] if quality else []
        lines.append(head)
        rows = {(r["test_setting"], r["model"], r["metric"]): r for r in group_rows(group)}
        for setting, _, metric in [k for k in rows if k[1] == "best"]:
            best, last = rows[(setting, "best", metric)], rows[(setting, "last", metric)]
            lines.append(f"  {setting:<20} {METRIC_LABEL[metric]:<7} {_pm(best['mean'], best['sd']):>15} "
                         f"{_num(best['trial_sd']):>8} {_pm(last['mean'], last['sd']):>15} "
                         f"{_pm(best['published'], best['published_sd']):>16}")
    shown = [registry().get(g.dataset) for g in groups if g.stage == "rpnr"]  # datasets with published rows
    sources = {ds.published_results.source for ds in shown if ds is not None and ds.published_results}
    legend = ("mean ± sd: sample sd (ddof 1) over the group's runs; trial sd: sd over the gallery trials of one run, "
              "averaged over runs; best = selected on the test set (the release's protocol), last = the final epoch. "
              + " ".join(f"Published (stage 2, best): {s}." for s in sorted(sources)))
    return [*lines, "", *textwrap.wrap(legend, 100)]


def markdown_table(groups: list[Group]) -> list[str]:
    """A Markdown table for a paper draft: one row per group, test setting and model, metrics as mean ± sd, and a
    row of the release's numbers where the registry holds them."""
    head = ["dataset", "stage", "settings", "runs", "test setting", "model", *(METRIC_LABEL[m] for m in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        rows = group_rows(group)
        for setting in dict.fromkeys(r["test_setting"] for r in rows):
            for model in (*MODELS, "published"):
                picked = {r["metric"]: r for r in rows if r["test_setting"] == setting and
                          r["model"] == ("best" if model == "published" else model)}
                cells = [_pm(picked[m]["published"], picked[m]["published_sd"]) if model == "published" else
                         _pm(picked[m]["mean"], picked[m]["sd"]) for m in METRICS]
                if model == "published" and not any(cells):
                    continue
                runs = "release" if model == "published" else str(len(group.runs))
                lines.append("| " + " | ".join([group.dataset, group.stage, group.settings.replace(";", "; "), runs,
                                                setting, model, *cells]) + " |")
    return lines
