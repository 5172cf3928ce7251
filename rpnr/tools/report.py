"""From runs to a table (DESIGN.md section 12)."""

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import statistics
import textwrap
from pathlib import Path

from rpnr.common.errors import ReportError
from rpnr.common.files import RUN_JSON, TEST_JSON
from rpnr.data.published import METRICS
from rpnr.data.registry import all_datasets
from rpnr.engine.run_folder import RunFolder
from rpnr.engine.settings import recipe

MODELS = ("best", "last")
METRIC_LABEL = {m: m.replace("rank", "Rank-") for m in METRICS}  # "rank1" -> "Rank-1"
COLUMNS = ("dataset", "stage", "settings", "test_setting", "model", "metric", "runs", "mean", "sd", "trial_sd",
           "published", "published_sd")
QUALITY = ("purity", "ari", "nmi")  # pseudo-label quality of the last epoch (metrics.json), per modality


@dataclasses.dataclass
class Run:
    """A finished run: its folder, run.json, test.json and metrics.json's last record ({} without one)."""

    path: Path
    record: dict
    test: dict
    last_epoch: dict  # metrics.json's last record ({} without one)

    @property
    def args(self) -> dict:
        """The run's settings as last given (a resume may give more epochs)."""
        resumed = [r for r in self.record.get("resumed", []) if isinstance(r, dict) and isinstance(r.get("args"), dict)]
        return resumed[-1]["args"] if resumed else self.record["args"]

    def last_epoch_reached(self) -> int:
        """The last epoch the run recorded (metrics.json) or a resume asked for (run.json)."""
        resumed = self.args.get("epochs", 0) if self.args is not self.record["args"] else 0
        epoch = self.last_epoch.get("epoch", 0)
        return max(epoch if isinstance(epoch, int) else 0, resumed if isinstance(resumed, int) else 0)

    @property
    def dataset(self) -> str:
        return self.record["args"]["dataset"]

    @property
    def stage(self) -> str:
        return self.record["args"]["stage"]

    def identity(self) -> dict:
        """What besides the recipe makes runs comparable: the data and, for stage 2, the stage-1 recipe."""
        start = self.record.get("start")
        return {"data": self.record.get("data_id"), "start": start.get("recipe") if isinstance(start, dict) else None}

    def quality(self) -> dict:
        """The last epoch's pseudo-label quality (``purity_rgb``, ``ari_ir``, ...)."""
        return {k: v for k, v in self.last_epoch.items()
                if k.rsplit("_", 1)[0] in QUALITY and isinstance(v, (int, float))}


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
        versions: dict[str, set[str]] = {}  # library -> the versions the runs used
        for run in self.runs:
            for name, version in (run.record.get("versions") or {}).items():
                versions.setdefault(name, set()).add(str(version))
        differ = [f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items()) if len(v) > 1]
        if differ:
            out.append("runs with different library versions: " + ", ".join(differ))
        return out


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    value = json.loads(path.read_text())
    if not isinstance(value, dict) or not all(isinstance(value.get(k), dict) for k in keys):
        raise ValueError(f"not a JSON object with {', '.join(keys)}")
    return value


def _metrics_problem(test: dict) -> str:
    """Why a test.json's metrics are unusable (damaged, or a metric that is not a number); "" when they are not."""
    for model in MODELS:
        for setting, result in test[model].items():
            if isinstance(result, dict) and "rank1" in result:
                values = [(m, r.get(m)) for r in (result, *result.get("per_trial", [])) for m in METRICS]
                if not all(isinstance(v, (int, float)) for _, v in values):
                    return "is damaged (not the test.json train.py writes)"
                bad = next((m for m, v in values if not math.isfinite(v)), None)
                if bad:
                    return f"holds a {METRIC_LABEL[bad]} that is not a number ({model} model, {setting}); not averaged"
    return ""


def _last_record(folder: Path) -> dict:
    try:
        last = json.loads((folder / "metrics.json").read_text())[-1]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return {}
    return last if isinstance(last, dict) else {}


def _run_folders(paths: list[str | os.PathLike]) -> list[Path]:
    """The run folders under ``paths``, each once however it is reached (relative, absolute, a symlink)."""
    folders: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path} does not exist")
        found = sorted(Path(root) for root, _, files in os.walk(path, followlinks=True) if RUN_JSON in files)
        if not found:
            raise ReportError(f"{path} holds no run folder (no {RUN_JSON} under it)")
        for folder in found:
            folders.setdefault(os.path.realpath(folder), folder)
    return list(folders.values())


def find_runs(paths: list[str | os.PathLike]) -> tuple[list[Run], list[str]]:
    """The finished runs under ``paths`` (sorted by path), each counted once, and one line per run folder left
    out (unfinished, in progress, damaged, a copy)."""
    runs, skipped, copies = [], [], {}
    for folder in _run_folders(paths):
        try:
            text = (folder / RUN_JSON).read_bytes()
            record = _read_json(folder / RUN_JSON, ("args",))
            if not {"dataset", "stage"} <= set(record["args"]):
                raise ValueError("no dataset or stage")
        except (OSError, ValueError):
            skipped.append(f"skipped: {folder / RUN_JSON} is damaged (not the run.json train.py writes)")
            continue
        original = copies.setdefault(hashlib.sha256(text).hexdigest(), folder)
        if original != folder:
            skipped.append(f"duplicate: {folder} holds the same run as {original} (the same {RUN_JSON}); counted "
                           f"once")
            continue
        if RunFolder(folder).in_use():
            skipped.append(f"unfinished: {folder} (a run is in progress in it; not averaged)")
            continue
        if not (folder / TEST_JSON).is_file():
            skipped.append(f"unfinished: {folder} (no {TEST_JSON}: the run did not end; not averaged)")
            continue
        try:
            test = _read_json(folder / TEST_JSON, MODELS)
            problem = _metrics_problem(test)
        except (OSError, ValueError):
            problem = "is damaged (not the test.json train.py writes)"
        if problem:
            skipped.append(f"skipped: {folder / TEST_JSON} {problem}")
            continue
        run = Run(folder, record, test, _last_record(folder))
        tested, reached = test["last"].get("epoch"), run.last_epoch_reached()
        if not isinstance(tested, int) or tested < reached:
            skipped.append(f"unfinished: {folder} (its {TEST_JSON} is of epoch {tested}, but the run went on to "
                           f"epoch {reached}: it did not end; not averaged)")
            continue
        runs.append(run)
    return runs, skipped


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of one dataset, stage and recipe, in the order first met, labelled by their differing settings."""
    groups: dict[str, Group] = {}
    for run in runs:
        rec = {**recipe(run.args), **{f"{k}": v for k, v in run.identity().items()}}
        key = json.dumps([run.dataset, run.stage, rec], sort_keys=True)
        groups.setdefault(key, Group(run.dataset, run.stage, rec, [])).runs.append(run)
    for group in groups.values():
        peers = [g for g in groups.values() if (g.dataset, g.stage) == (group.dataset, group.stage)]
        differ = [k for k in group.recipe if len({json.dumps(g.recipe.get(k), sort_keys=True) for g in peers}) > 1]
        group.settings = ";".join(f"{k}={_setting_text(k, group.recipe[k], [g.recipe.get(k) for g in peers])}"
                                  for k in differ)
    return list(groups.values())


def _setting_text(key: str, value, values: list) -> str:
    """A differing entry as shown: its value, the data's short checksum, or the stage-1 recipe entries that differ."""
    if key == "data":
        return str(value)[:8] if value else "unrecorded"
    if key == "start":
        if not isinstance(value, dict):
            return "unrecorded"
        others = [v for v in values if isinstance(v, dict)]
        return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in value.items()
                              if len({json.dumps(o.get(k)) for o in others}) > 1) + "}"
    return json.dumps(value)


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample sd (ddof 1; None for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _setting_names(group: Group) -> list[str]:
    names = [k for k, v in group.runs[0].test["best"].items() if isinstance(v, dict) and "rank1" in v]
    return [n for n in names if all(n in r.test[m] for r in group.runs for m in MODELS)]


def group_rows(group: Group) -> list[dict]:
    """One row per test setting, model and metric (:data:`COLUMNS`); the published numbers beside stage 2's best."""
    ds = all_datasets().get(group.dataset)
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
    """The group's mean last-epoch pseudo-label quality, visible/infrared ("" without it)."""
    values: dict[str, list[float]] = {}
    for run in group.runs:
        for key, value in run.quality().items():
            values.setdefault(key, []).append(float(value))
    mean = {k: f"{statistics.fmean(v):.3f}" for k, v in values.items()}
    parts = [f"{'purity' if q == 'purity' else q.upper()} {mean.get(f'{q}_rgb', '-')}/{mean.get(f'{q}_ir', '-')}"
             for q in QUALITY if f"{q}_rgb" in mean or f"{q}_ir" in mean]
    return f"pseudo labels, last epoch, visible/infrared: {', '.join(parts)}" if parts else ""


def _title(group: Group) -> str:
    ds = all_datasets().get(group.dataset)
    stage = "stage 1 (baseline)" if group.stage == "baseline" else f"stage 2 ({group.stage})"
    return f"{ds.display if ds else group.dataset} {stage}: {len(group.runs)} run(s)" + (
        f"; settings {group.settings.replace(';', ', ')}" if group.settings else "")


def text_table(groups: list[Group]) -> list[str]:
    """The terminal table (at most 100 columns): per group, setting and metric the best and the last model's
    mean ± sd, the sd over gallery trials and the published number."""
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
    shown = [all_datasets().get(g.dataset) for g in groups if g.stage == "rpnr"]  # datasets with published rows
    sources = {ds.published_results.source for ds in shown if ds is not None and ds.published_results}
    legend = ("mean ± sd: sample sd (ddof 1) over the group's runs; trial sd: sd over the gallery trials of one run, "
              "averaged over runs; best = selected on the test set (the release's protocol), last = the final epoch. "
              + " ".join(f"Published (stage 2, best): {s}." for s in sorted(sources)))
    return [*lines, "", *textwrap.wrap(legend, 100)]


def markdown_table(groups: list[Group]) -> list[str]:
    """A Markdown table: one row per group, setting and model (and the release's numbers where known)."""
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


def csv_text(groups: list[Group]) -> str:
    """One CSV row per group, test setting, model and metric (:data:`COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for group in groups:
        for row in group_rows(group):
            writer.writerow({k: "" if v is None else f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()
