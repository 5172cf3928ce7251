"""Run outputs in the logs folder: ``log.txt`` (every printed line), ``metrics.json`` (one record per epoch)
and ``curves.png`` (per epoch: Rank-1/mAP/mINP, every loss term, clusters and outliers per modality,
pseudo-label purity and the learning rate)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rpnr.files import atomic_write, write_json  # noqa: E402


class RunLog:
    """Prints lines (tqdm-safe) and appends them to ``log.txt``; keeps ``metrics.json`` and ``curves.png``.

    A resumed run (DESIGN.md section 10) keeps the metrics records up to epoch ``resume_epoch`` and the first
    ``log_bytes`` bytes of the log; ``resume_epoch=None`` starts both afresh. ``enabled=False`` (torchrun ranks
    other than 0) prints and writes nothing.
    """

    def __init__(self, logs_dir: str | os.PathLike, resume_epoch: int | None = None, enabled: bool = True,
                 log_bytes: int | None = None):
        self.dir = Path(logs_dir)
        self.enabled = enabled
        self.log_path = self.dir / "log.txt"
        self.metrics_path = self.dir / "metrics.json"
        self.records: list[dict] = []
        if not enabled:
            return
        if resume_epoch is None:  # a fresh run: the folder holds no earlier outputs (rpnr.run_folder)
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
        plot_curves(self.records, self.dir / "curves.png")


# the panels of curves.png: title -> (record key, label) of each line; "loss_*" stands for every loss term
PANELS = {
    "evaluation (%)": (("rank1", "Rank-1"), ("mAP", "mAP"), ("mINP", "mINP")),
    "losses": (("loss_*", ""),),
    "clusters": (("clusters_rgb", "visible"), ("clusters_ir", "infrared")),
    "outliers": (("outliers_rgb", "visible"), ("outliers_ir", "infrared")),
    "pseudo-label purity": (("purity_rgb", "visible"), ("purity_ir", "infrared")),
    "learning rate": (("lr", "lr"),),
}


def plot_curves(records: list[dict], path: str | os.PathLike) -> None:
    """Every panel of :data:`PANELS` per epoch (integer ticks), drawn to ``path`` (PNG); lines a record lacks
    (e.g. purity without ground truth) are left out."""
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, lines) in zip(axes.flat, PANELS.items()):
        if lines[0][0] == "loss_*":
            keys = dict.fromkeys(k for r in records for k in r if k.startswith("loss_"))  # in first-seen order
            lines = [(k, k[len("loss_"):]) for k in keys]
        for key, label in lines:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines and len(ax.lines) > 1:
            ax.legend(fontsize="small")
    axes.flat[-1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=80)
    finally:
        plt.close(fig)
    atomic_write(path, buffer.getbuffer())
