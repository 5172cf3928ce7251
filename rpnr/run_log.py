"""Run outputs in the logs folder: ``log.txt`` (every printed line), ``metrics.json``
(one record per epoch) and ``curves.png`` (Rank-1/mAP and cluster counts per epoch)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend
from tqdm import tqdm  # noqa: E402

TIME_PREFIX = "time_"  # metrics keys that hold seconds (differ between otherwise identical runs)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunLog:
    """Prints lines (tqdm-safe) and appends them to ``log.txt``; keeps ``metrics.json`` and ``curves.png``.

    ``resume_epoch``: keep the log and the metrics records of epochs up to this
    number (a resumed run); ``None`` starts both afresh. ``enabled=False`` (torchrun
    ranks other than 0) prints and writes nothing.
    """

    def __init__(self, logs_dir: str | os.PathLike, resume_epoch: int | None = None, enabled: bool = True):
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
        elif self.metrics_path.is_file():
            try:
                records = json.loads(self.metrics_path.read_text())
            except json.JSONDecodeError:
                records = []
            self.records = [r for r in records if isinstance(r, dict) and r.get("epoch", 0) <= resume_epoch]

    def print(self, line: str = "") -> None:
        if self.enabled:
            tqdm.write(line)
            self.note(line)

    def note(self, line: str) -> None:
        """Append ``line`` to ``log.txt`` only (e.g. an error the caller prints itself)."""
        if self.enabled:
            with open(self.log_path, "a") as fh:
                fh.write(line + "\n")

    def write_json(self, name: str, obj) -> None:
        """Write ``obj`` as ``name`` in the logs folder (atomically)."""
        if self.enabled:
            _atomic_write_text(self.dir / name, json.dumps(obj, indent=1) + "\n")

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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
