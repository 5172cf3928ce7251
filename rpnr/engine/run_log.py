"""A run's log.txt, metrics.json (one record per epoch) and curves.png."""

import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rpnr.common.files import atomic_write, write_json  # noqa: E402


class RunLog:
    """Prints lines (tqdm-safe) and appends them to ``log.txt``; keeps ``metrics.json`` and ``curves.png``.

    A resumed run (DESIGN.md section 10) keeps the metrics records up to epoch ``resume_epoch`` and the first
    ``log_bytes`` bytes of the log; ``resume_epoch=None`` starts both afresh. ``enabled=False`` (torchrun ranks
    other than 0) prints and writes nothing.
    """

    def __init__(self, logs_dir: str | os.PathLike, resume_epoch: int | None = None, enabled: bool = True,
                 log_bytes: int | None = None, loss_weights: dict | None = None):
        self.dir = Path(logs_dir)
        self.loss_weights = loss_weights or {}  # term -> weight in the total (curves.png draws weighted terms)
        self.enabled = enabled
        self.log_path = self.dir / "log.txt"
        self.metrics_path = self.dir / "metrics.json"
        self.records: list[dict] = []
        if not enabled:
            return
        if resume_epoch is None:  # a fresh run: the folder holds no earlier outputs (rpnr.engine.run_folder)
            self.log_path.write_text("")
            return
        if log_bytes is not None and self.size() > log_bytes:
            os.truncate(self.log_path, log_bytes)  # nothing past the checkpoint's epoch
        records = json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else []
        self.records = [r for r in records if r["epoch"] <= resume_epoch]

    def print(self, line: str = "") -> None:
        if self.enabled:
            tqdm.write(line)
            self.note(line)

    def size(self) -> int:
        """The length of ``log.txt`` in bytes (0 when absent)."""
        return self.log_path.stat().st_size if self.log_path.is_file() else 0

    def note(self, line: str) -> None:
        """Append ``line`` to ``log.txt`` only (e.g. an error the caller prints itself)."""
        if self.enabled:
            with open(self.log_path, "a") as fh:
                fh.write(line + "\n")

    def add_record(self, record: dict) -> None:
        """Append one epoch's record (replacing an older one of the same epoch); rewrite json and curves."""
        if not self.enabled:
            return
        self.records = [r for r in self.records if r.get("epoch") != record.get("epoch")] + [record]
        write_json(self.metrics_path, self.records)
        plot_curves(self.records, self.dir / "curves.png", self.loss_weights)


# the panels of curves.png: title -> (record key, label) of each line; "loss_*" stands for every loss term
PANELS = {
    "evaluation (%)": (("rank1", "Rank-1"), ("mAP", "mAP"), ("mINP", "mINP")),
    "losses, weighted (the terms sum to total)": (("loss_*", ""),),
    "clusters": (("clusters_rgb", "visible"), ("clusters_ir", "infrared")),
    "outliers": (("outliers_rgb", "visible"), ("outliers_ir", "infrared")),
    "pseudo-label quality (vs identities)": tuple((f"{q}_{m}", f"{q.upper() if q != 'purity' else q} {name}")
                                                  for q in ("purity", "ari", "nmi")
                                                  for m, name in (("rgb", "visible"), ("ir", "infrared"))),
    "learning rate": (("lr", "lr"),),
}


def _loss_series(records: list[dict], weights: dict) -> dict[str, list]:
    """Each loss term times its weight in the total (label e.g. "10 x nrl"), then "total"; terms that are None in
    every record (modules left out) are not drawn."""
    series = {}
    for key in dict.fromkeys(k for r in records for k in r if k.startswith("loss_")):  # in first-seen order
        term, values = key[len("loss_"):], [r.get(key) for r in records]
        weight = 1.0 if term == "total" else weights.get(term) or 1.0
        label = term if weight == 1.0 else f"{weight:g} x {term}"
        series[label] = [None if v is None else weight * v for v in values]
    return series


def plot_curves(records: list[dict], path: str | os.PathLike, loss_weights: dict | None = None) -> dict:
    """Every panel of :data:`PANELS` per epoch (integer ticks), drawn to ``path`` (PNG); the loss terms weighted
    as in the total (``loss_weights``: term -> weight, 1 when absent); lines a record lacks (e.g. purity without
    ground truth) are left out. Returns what was drawn: panel title -> line label -> values per epoch."""
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    drawn = {}
    for ax, (title, lines) in zip(axes.flat, PANELS.items()):
        series = _loss_series(records, loss_weights or {}) if lines[0][0] == "loss_*" else \
            {label: [r.get(key) for r in records] for key, label in lines}
        drawn[title] = {label: values for label, values in series.items() if any(v is not None for v in values)}
        for label, values in drawn[title].items():
            ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(ax.lines) > 1:
            ax.legend(fontsize="small")
    axes.flat[-1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.95, wspace=0.22, hspace=0.32)  # tight_layout: 1 s
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=80)
    finally:
        plt.close(fig)
    atomic_write(path, buffer.getbuffer())
    return drawn
