"""Search a gallery of your own images with query images, using a trained model (rpnr.FeatureExtractor).

    python search.py --checkpoint logs/regdb_s2/1/model_best.pth.tar --query my/thermal --gallery my/visible \
        --query-modality thermal --gallery-modality visible --top-k 10 --out search_out

--query and --gallery: a folder (searched recursively for .jpg .jpeg .png .bmp files, --out left out) or a text file
listing image paths, one a line (relative to the text file's folder). Writes OUT/ranks.csv (query, rank, gallery,
similarity: the cosine similarity of the test embeddings, rank 1 the highest, ties in gallery order) and
OUT/ranks.png (the first 10 queries and their top 10, as the training run's rank list draws them).
"""

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from rpnr.common.command import Parser, require_positive, run_command, script
from rpnr.common.files import atomic_write, check_outputs
from rpnr.engine.rank_lists import draw_search, top_matches
from rpnr.tools.extractor import MODALITIES, FeatureExtractor, embed_files, image_files, stem_of

DRAWN = 10  # queries and matches drawn in ranks.png


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog="search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (ours or the official release's)")
    parser.add_argument("--query", required=True, help="folder or list file of query images")
    parser.add_argument("--gallery", required=True, help="folder or list file of gallery images")
    for side in ("query", "gallery"):
        parser.add_argument(f"--{side}-modality", required=True, type=str.lower, choices=list(MODALITIES))
    parser.add_argument("--top-k", type=int, default=10, help="matches listed per query (default 10)")
    parser.add_argument("--out", required=True, help="output folder (ranks.csv, ranks.png)")
    parser.add_argument("--ids-from-folders", action="store_true",
                        help="an image's identity is its folder's name: frames green (same identity) or red")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--height", type=int, default=None, help="image height, for a checkpoint that records none")
    parser.add_argument("--width", type=int, default=None, help="image width, for a checkpoint that records none")
    return parser.parse_args(argv)


def search(argv) -> None:
    args = parse_args(argv)
    require_positive(("--top-k", args.top_k), ("--batch-size", args.batch_size))
    out = Path(args.out)
    files = {side: image_files(path, exclude=out) for side, path in (("query", args.query), ("gallery", args.gallery))}
    check_outputs([(f"--out {args.out}", out / "ranks.csv"), (f"--out {args.out}", out / "ranks.png")],
                  [(f"--out {args.out}", out)], [(f"--checkpoint {args.checkpoint}", args.checkpoint), *(
                      (f"--{side} image {path}", path) for side in files for path in files[side])])
    extractor = FeatureExtractor(args.checkpoint, args.device, args.batch_size, args.height, args.width)
    print(f"checkpoint {args.checkpoint} at {extractor.height}x{extractor.width}, device {extractor.device}")
    queries, q_feat = embed_files(extractor, files["query"], stem_of(args.query_modality), "query")
    gallery, g_feat = embed_files(extractor, files["gallery"], stem_of(args.gallery_modality), "gallery")
    top_k = min(args.top_k, len(gallery))
    index, sim = top_matches(q_feat, g_feat, np.zeros((len(queries), len(gallery)), bool), top_k)
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["query", "rank", "gallery", "similarity"])
    rows.writerows([queries[q], k + 1, gallery[index[q, k]], float(sim[q, k])]
                   for q in range(len(queries)) for k in range(top_k))
    atomic_write(out / "ranks.csv", text.getvalue())
    title = f"{args.query_modality} to {args.gallery_modality}, {min(len(queries), DRAWN)} of {len(queries)} queries"
    draw_search(out / "ranks.png", title, queries[:DRAWN], gallery, index[:DRAWN, :DRAWN], sim[:DRAWN, :DRAWN],
                args.ids_from_folders, (extractor.height, extractor.width))
    print(f"wrote {out / 'ranks.csv'} ({len(queries)} queries x {top_k}) and {out / 'ranks.png'}")


def main(argv=None) -> int:
    return run_command(lambda: search(argv), "search.py")


if __name__ == "__main__":
    script(main)
