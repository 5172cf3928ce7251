"""t-SNE picture of a trained model's test embeddings: the query and gallery images of one trial of a prepared
dataset's first test setting, colour = identity (the first ``--ids`` identities), marker = modality.

    python -m rpnr.tsne --checkpoint logs/sysu_s2/model_best.pth.tar --dataset sysu --data-dir data/sysu_288x144 \
        --out tsne.png
"""

from __future__ import annotations

import argparse
import io
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from rpnr.checkpoint import CheckpointError, trained_on
from rpnr.config import UsageError
from rpnr.data.prepared import PreparedDataError
from rpnr.datasets import get_dataset, registry
from rpnr.distributed import DistributedError, resolve_device
from rpnr.evaluation import extract_features_uint8
from rpnr.files import atomic_write, error_line
from rpnr.models import build_model, load_weights
from rpnr.protocols import trial_sets

MARKERS = {"visible": "o", "infrared": "^"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpnr.tsne", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (ours or the official release's)")
    parser.add_argument("--dataset", choices=list(registry()), required=True)
    parser.add_argument("--data-dir", required=True, help="prepared folder (prepare_<dataset>.py)")
    parser.add_argument("--trial", type=int, default=None, help="test trial (default: the dataset's first)")
    parser.add_argument("--ids", type=int, default=10, help="identities drawn, the first in sorted order (default 10)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True, help="the PNG file to write")
    args = parser.parse_args(argv)
    try:
        ds = get_dataset(args.dataset)
        trial = ds.trials[0] if args.trial is None else args.trial
        if args.ids < 1:
            raise UsageError(f"--ids must be positive, got {args.ids}")
        sets = trial_sets(args.dataset, args.data_dir, trial, ds.settings[0].name)
        trained_on(args.checkpoint, args.dataset, trial if ds.model_per_trial else None, ds.display)
        model = build_model("agw")
        load_weights(model, args.checkpoint)
        device = torch.device(resolve_device(args.device))
        ids = np.unique(np.concatenate([sets.query.pids, sets.gallery.pids]))[:args.ids]
        sides = [(side, images.subset(np.flatnonzero(np.isin(images.pids, ids))))
                 for side, images in ((sets.setting.query, sets.query), (sets.setting.gallery, sets.gallery))]
        feats = np.concatenate([extract_features_uint8(model.to(device), s.images, side.modal, args.batch_size,
                                                       device=device).cpu().numpy() for side, s in sides])
        if len(feats) < 2:
            raise UsageError(f"only {len(feats)} image of the first {args.ids} identities: nothing to reduce")
        points = TSNE(perplexity=min(30.0, len(feats) - 1.0), init="pca", random_state=0).fit_transform(feats)
        fig, ax = plt.subplots(figsize=(7, 6))
        pids, start = np.concatenate([s.pids for _, s in sides]), 0
        colors = plt.get_cmap("tab20" if len(ids) > 10 else "tab10")(np.searchsorted(ids, pids) % 20)
        for role, (side, s) in zip(("query", "gallery"), sides):
            rows = slice(start, start + len(s))
            ax.scatter(points[rows, 0], points[rows, 1], c=colors[rows], marker=MARKERS[side.modal], s=28,
                       edgecolors="black", linewidths=0.3, label=f"{side.modal} {role} ({len(s)} images)")
            start += len(s)
        ax.set_title(f"{sets.title}: t-SNE of {len(feats)} test embeddings, {len(ids)} identities (colour)", fontsize=9)
        for handle in ax.legend(loc="best", fontsize=8).legend_handles:
            handle.set_facecolor("0.6")  # the legend tells the modalities apart by marker only
        ax.set(xticks=[], yticks=[])
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
        plt.close(fig)
        atomic_write(args.out, buffer.getbuffer())
    except (CheckpointError, PreparedDataError, UsageError, DistributedError, ValueError, OSError) as exc:
        print(f"rpnr.tsne: error: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"drew {len(feats)} images ({', '.join(f'{len(s)} {side.modal}' for side, s in sides)}) of {len(ids)} "
          f"identities: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
