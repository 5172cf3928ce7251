"""Run outputs in the logs folder: ``log.txt`` (every printed line), ``metrics.json``
(one record per epoch) and ``curves.png`` (Rank-1/mAP and cluster counts per epoch)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend
from tqdm import tqdm  # noqa: E402

from rpnr.files import atomic_write, write_json  # noqa: E402


class RunLog:
    """Prints lines (tqdm-safe) and appends them to ``log.txt``; keeps ``metrics.json`` and ``curves.png``.

    ``resume_epoch``: keep the log and the metrics records of epochs up to this
    number (a resumed run); ``None`` starts both afresh. ``log_bytes``: with
    ``resume_epoch``, cut ``log.txt`` back to this length (what it held when the
    checkpoint was written). ``enabled=False`` (torchrun ranks other than 0) prints
    and writes nothing.
    """

    def __init__(self, logs_dir: str | os.PathLike, resume_epoch: int | None = None, enabled: bool = True,
                 log_bytes: int | None = None):
        self.dir = Path(logs_dir)
        self.enabled = enabled
        self.log_path = self.dir / "log.txt"
        self.metrics_path = self.dir / "metrics.json"
        self.curves_path = self.dir / "curves.png"
        self.records: list[dict] = []
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_epoch is None:
            self.log_path.write_text("")
            for stale in (self.metrics_path, self.curves_path):
                stale.unlink(missing_ok=True)
            return
        if log_bytes is not None and self.log_path.is_file() and self.log_path.stat().st_size > log_bytes:
            os.truncate(self.log_path, log_bytes)  # nothing past the checkpoint's epoch
        if self.metrics_path.is_file():
            try:
                records = json.loads(self.metrics_path.read_text())
            except json.JSONDecodeError:
                records = []
            self.records = [r for r in records if isinstance(r, dict) and r.get("epoch", 0) <= resume_epoch]

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

    def write_json(self, name: str, obj) -> None:
        """Write ``obj`` as ``name`` in the logs folder (atomically)."""
        if self.enabled:
            write_json(self.dir / name, obj)

    def add_record(self, record: dict) -> None:
        """Append one epoch's record (replacing an older one of the same epoch); rewrite json and curves."""
        if not self.enabled:
            return
        self.records = [r for r in self.records if r.get("epoch") != record.get("epoch")] + [record]
        self.write_json(self.metrics_path.name, self.records)
        plot_curves(self.records, self.curves_path)


def plot_curves(records: list[dict], path: str | os.PathLike) -> None:
    """Rank-1/mAP and cluster counts per epoch, drawn to ``path`` (PNG)."""
    epochs = [r["epoch"] for r in records]
    fig, (ax_acc, ax_k) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("rank1", "Rank-1"), ("mAP", "mAP")):
        ax_acc.plot(epochs, [r.get(key) for r in records], marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("%")
    ax_acc.set_title("evaluation")
    ax_acc.legend()
    for key, label in (("clusters_rgb", "visible clusters"), ("clusters_ir", "infrared clusters")):
        ax_k.plot(epochs, [r.get(key) for r in records], marker="o", label=label)
    ax_k.set_xlabel("epoch")
    ax_k.set_title("pseudo identities")
    ax_k.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=80)
    finally:
        plt.close(fig)
    atomic_write(path, buffer.getbuffer())
