"""``python -m rpnr.tsne``: a t-SNE picture of a trained model's test embeddings, the query and gallery images of
one trial of a prepared dataset's first test setting (colour: identity, the first ``--ids``; marker: modality).

    python -m rpnr.tsne --checkpoint logs/sysu_s2/model_best.pth.tar --dataset sysu --data-dir data/sysu_288x144 \
        --out tsne.png
"""

import argparse
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from rpnr.common.command import Parser, require_positive, run_command
from rpnr.common.errors import UsageError
from rpnr.common.files import atomic_write, check_outputs
from rpnr.data.prepared import check_prepared
from rpnr.data.registry import all_datasets, get_dataset
from rpnr.engine.rank_lists import trial_sets
from rpnr.engine.settings import resolve_device
from rpnr.evaluation import extract_features_uint8
from rpnr.models import load_trained

MARKERS = {"visible": "o", "infrared": "^"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog="python -m rpnr.tools.tsne", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (ours or the official release's)")
    parser.add_argument("--dataset", choices=list(all_datasets()), required=True)
    parser.add_argument("--data-dir", required=True, help="prepared folder (prepare_<dataset>.py)")
    parser.add_argument("--trial", type=int, default=None, help="test trial (default: the dataset's first)")
    parser.add_argument("--ids", type=int, default=10, help="identities drawn, the first in sorted order (default 10)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True, help="the PNG file to write")
    return parser.parse_args(argv)


def draw_tsne(argv) -> None:
    args = parse_args(argv)
    ds = get_dataset(args.dataset)
    trial = ds.trials[0] if args.trial is None else args.trial
    require_positive(("--ids", args.ids), ("--batch-size", args.batch_size))
    check_outputs([(f"--out {args.out}", args.out)], inputs=[(f"--checkpoint {args.checkpoint}", args.checkpoint),
                                                             (f"--data-dir {args.data_dir}", args.data_dir)])
    manifest = check_prepared(args.data_dir, args.dataset)
    sets = trial_sets(args.dataset, args.data_dir, trial, ds.settings[0].name)
    device = torch.device(resolve_device(args.device))
    trained = load_trained(args.checkpoint, device, args.dataset, trial if ds.model_per_trial else None,
                           display=ds.display)
    trained.check_size(args.data_dir, (manifest["height"], manifest["width"]))
    for line in trained.notes:
        print(line)
    ids = np.unique(np.concatenate([sets.query.pids, sets.gallery.pids]))[:args.ids]
    sides = [(side, images.subset(np.flatnonzero(np.isin(images.pids, ids))))
             for side, images in ((sets.setting.query, sets.query), (sets.setting.gallery, sets.gallery))]
    feats = np.concatenate([extract_features_uint8(trained.model, s.images, side.modal, args.batch_size,
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
    print(f"drew {len(feats)} images ({', '.join(f'{len(s)} {side.modal}' for side, s in sides)}) of {len(ids)} "
          f"identities: {args.out}")


def main(argv=None) -> int:
    return run_command(lambda: draw_tsne(argv), "rpnr.tools.tsne")

