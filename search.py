"""Search a gallery of your own images with query images, using a trained model (rpnr.FeatureExtractor).

    python search.py --checkpoint logs/regdb_s2/1/model_best.pth.tar --query my/thermal --gallery my/visible \
        --query-modality thermal --gallery-modality visible --top-k 10 --out search_out

--query and --gallery: a folder (searched recursively for .jpg .jpeg .png .bmp files) or a text file listing
image paths, one a line (relative to the text file's folder). Writes OUT/ranks.csv (query, rank, gallery,
similarity: the cosine similarity of the test embeddings, rank 1 the highest, ties in gallery order) and
OUT/ranks.png (the first 10 queries and their top 10, as the training run's rank list draws them).
"""

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rpnr.checkpoint import CheckpointError
from rpnr.config import UsageError
from rpnr.data.raw_images import RawDataError
from rpnr.distributed import DistributedError
from rpnr.extractor import MODALITIES, FeatureExtractor, load_image, stem_of
from rpnr.files import atomic_write, error_line
from rpnr.rank_list import RankList, draw_rank_list, top_matches

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DRAWN = 10  # queries and matches drawn in ranks.png


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser.parse_args(argv)


def image_files(path: str) -> list[Path]:
    """The image files of a folder (recursively, sorted) or of a list file, each other file of a folder named."""
    where = Path(path)
    if where.is_dir():
        files = sorted(p for p in where.rglob("*") if p.is_file())
        for other in (p for p in files if p.suffix.lower() not in SUFFIXES):
            print(f"skipped: {other} (not an image)")
        files = [p for p in files if p.suffix.lower() in SUFFIXES]
    elif where.is_file():
        try:
            files = [where.parent / line.strip() for line in where.read_text().splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UsageError(f"{path} is neither a folder nor a text file listing image paths") from None
    else:
        raise UsageError(f"{path} not found")
    if not files:
        raise UsageError(f"no images in {path} (looked for {' '.join(SUFFIXES)} files)")
    return files


def embed(extractor: FeatureExtractor, files: list[Path], modality: str, what: str) -> tuple[list[Path], np.ndarray]:
    """(the readable files, their embeddings float32 [n, 2048]); each unreadable file named and skipped."""
    kept, feats, size = [], [], (extractor.height, extractor.width)
    with tqdm(total=len(files), desc=what, unit="img", dynamic_ncols=True, disable=None) as bar:
        for start in range(0, len(files), extractor.batch_size):
            arrays = []
            for path in files[start:start + extractor.batch_size]:
                try:
                    arrays.append(load_image(path, *size))
                    kept.append(path)
                except RawDataError:
                    tqdm.write(f"skipped: {path} ({'not an image' if path.is_file() else 'not found'})")
            feats += [extractor(arrays, modality).numpy()] if arrays else []
            bar.update(len(files[start:start + extractor.batch_size]))
    if not kept:
        raise UsageError(f"none of the {what} images can be read")
    return kept, np.concatenate(feats)


def draw(path: Path, title: str, queries: list, gallery: list, index: np.ndarray, sim: np.ndarray,
         ids: dict | None, size: tuple[int, int]) -> None:
    """The rank list picture of ``queries`` (rows) and their matches ``index`` [R, K] in ``gallery``: framed by
    identity with ``ids`` (image -> folder name), else grey with file names."""
    number = {name: n for n, name in enumerate(sorted(set(ids.values())))} if ids else {}
    pid = np.vectorize(lambda p: number[ids[p]] if ids else 0, otypes=[np.int64])
    q_img = np.stack([load_image(p, *size) for p in queries])  # [R, H, W, 3]
    g_img = np.stack([[load_image(gallery[j], *size) for j in row] for row in index])  # [R, K, H, W, 3]
    matched = np.array(gallery, dtype=object)[index]  # [R, K] gallery paths
    name = ids.get if ids else (lambda p: p.stem)
    draw_rank_list(RankList(title, q_img, pid(np.array(queries, dtype=object)), np.zeros(len(queries), np.int64),
                            g_img, pid(matched), index, sim, len(gallery), colored=ids is not None,
                            query_text=[name(p) for p in queries],
                            gallery_text=[[name(p) for p in row] for row in matched]), path)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
            if value < 1:
                raise UsageError(f"{flag} must be positive, got {value}")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UsageError(f"--out {args.out} is a file; give a folder")
        files = {side: image_files(path) for side, path in (("query", args.query), ("gallery", args.gallery))}
        extractor = FeatureExtractor(args.checkpoint, args.device, args.batch_size)
        print(f"checkpoint {args.checkpoint} at {extractor.height}x{extractor.width}, device {extractor.device}")
        queries, q_feat = embed(extractor, files["query"], stem_of(args.query_modality), "query")
        gallery, g_feat = embed(extractor, files["gallery"], stem_of(args.gallery_modality), "gallery")
        top_k = min(args.top_k, len(gallery))
        index, sim = top_matches(q_feat, g_feat, np.zeros((len(queries), len(gallery)), bool), top_k)
        text = io.StringIO()
        rows = csv.writer(text, lineterminator="\n")
        rows.writerow(["query", "rank", "gallery", "similarity"])
        rows.writerows([queries[q], k + 1, gallery[index[q, k]], float(sim[q, k])]
                       for q in range(len(queries)) for k in range(top_k))
        atomic_write(Path(args.out) / "ranks.csv", text.getvalue())
        ids = {p: p.parent.name for p in queries + gallery} if args.ids_from_folders else None
        shown = f"{min(len(queries), DRAWN)} of {len(queries)} queries"
        title = f"{args.query_modality} to {args.gallery_modality}, {shown}"
        draw(Path(args.out) / "ranks.png", title, queries[:DRAWN], gallery, index[:DRAWN, :DRAWN],
             sim[:DRAWN, :DRAWN], ids, (extractor.height, extractor.width))
    except (CheckpointError, UsageError, DistributedError, ValueError, OSError) as exc:
        print(f"search.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out) / 'ranks.csv'} ({len(queries)} queries x {top_k}) and {Path(args.out) / 'ranks.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
