"""Rank lists: top gallery matches framed green (same identity) or red (DESIGN.md section 6)."""

import io
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from rpnr.common.files import atomic_write
from rpnr.data.prepared import ImageSet, Setting, check_prepared, check_trial, load_side
from rpnr.data.raw import load_image
from rpnr.data.registry import get_dataset
from rpnr.evaluation import extract_features_uint8

MIN_IMAGE_HEIGHT = 128  # small images are scaled up by an integer factor to at least this height
BORDER = 4  # frame width (pixels)
GAP = 6  # space between cells
FONT_SIZE = 13
SAME, OTHER, QUERY, EMPTY = (0, 160, 0), (215, 0, 0), (40, 90, 200), (200, 200, 200)


@dataclass
class TrialSets:
    """The query and gallery images of one setting and trial."""

    query: ImageSet  # query images (memory-mapped when the whole set)
    gallery: ImageSet  # gallery images of the trial, in its official order
    setting: Setting
    title: str  # e.g. "SYSU-MM01 all-search, gallery of trial 0"

    def excluded(self, query: ImageSet) -> np.ndarray:
        """bool [Q, G]: the gallery images the setting's metric ignores for each query of ``query``."""
        shape = (len(query), len(self.gallery))
        if self.setting.ignored is None:
            return np.zeros(shape, dtype=bool)
        rule = self.setting.ignored(query.pids[:, None], query.cams[:, None], self.gallery.pids[None, :],
                                    self.gallery.cams[None, :])
        return np.broadcast_to(rule, shape)


def trial_sets(dataset: str, root: str | os.PathLike, trial: int | None = None,
               setting: str | None = None) -> TrialSets:
    """The query and gallery images of ``setting`` (default: the per-epoch one) in ``trial`` (default: the first)."""
    ds = get_dataset(dataset)
    check_prepared(root, dataset)
    trial = ds.trials[0] if trial is None else trial
    check_trial(ds.trials, trial, ds.display)
    s = ds.setting(setting or ds.epoch_setting)
    title = f"{s.title}, {'trial' if ds.model_per_trial else 'gallery of trial'} {trial}"
    return TrialSets(load_side(root, s.query, trial), load_side(root, s.gallery, trial), s, title)


@dataclass
class RankList:
    """Top-k gallery matches of a few queries (images at their stored size)."""

    title: str
    query_images: np.ndarray  # uint8 [R, H, W, 3]
    query_pids: np.ndarray  # int64 [R]
    query_cams: np.ndarray  # int64 [R]
    gallery_images: np.ndarray  # uint8 [R, K, H, W, 3] (zeros where index is -1)
    gallery_pids: np.ndarray  # int64 [R, K] (-1 where index is -1)
    index: np.ndarray  # int64 [R, K] gallery rows, best first; -1 where fewer than K images remain
    similarity: np.ndarray  # float32 [R, K] (nan where index is -1)
    gallery_size: int
    colored: bool = True  # frames green/red by identity (False: grey, without ground truth)
    query_text: list[str] | None = None  # [R] under each query (default "id P cam C")
    gallery_text: list[list[str]] | None = None  # [R][K] under each match (default "id P")

    @property
    def matches(self) -> np.ndarray:
        """bool [R, K]: the gallery image shows the query's identity."""
        return (self.index >= 0) & (self.gallery_pids == self.query_pids[:, None])


def spread_queries(pids: np.ndarray, num: int) -> np.ndarray:
    """``num`` query rows: the first image of identities evenly spaced over the sorted identities (more
    images, evenly spaced, when there are fewer identities)."""
    if num < 1:
        raise ValueError(f"the number of queries must be positive, got {num}")
    pids = np.asarray(pids)
    ids = np.unique(pids)
    picks = ids[np.round(np.linspace(0, len(ids) - 1, min(num, len(ids)))).astype(np.int64)]
    rows = [int(np.flatnonzero(pids == pid)[0]) for pid in picks]
    rest = np.setdiff1d(np.arange(len(pids)), rows)
    if num > len(rows) and len(rest):
        extra = rest[np.round(np.linspace(0, len(rest) - 1, min(num - len(rows), len(rest)))).astype(np.int64)]
        rows.extend(int(r) for r in extra)
    return np.array(rows, dtype=np.int64)


def top_matches(q_feat: np.ndarray, g_feat: np.ndarray, excluded: np.ndarray,
                top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(index [Q, top_k], similarity [Q, top_k])`` of each query's most similar gallery images, best first (ties:
    lower row first), ``excluded`` [Q, G] skipped; -1 and nan where fewer remain."""
    sim = np.where(excluded, -np.inf, np.matmul(q_feat, g_feat.T).astype(np.float32))  # [Q, G]
    sim = np.concatenate([sim, np.full((len(sim), max(0, top_k - sim.shape[1])), -np.inf, np.float32)], 1)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :top_k]  # [Q, top_k]
    top = np.take_along_axis(sim, order, axis=1)  # [Q, top_k]
    missing = ~np.isfinite(top)
    return np.where(missing, -1, order).astype(np.int64), np.where(missing, np.nan, top).astype(np.float32)


def compute_rank_list(model: nn.Module, dataset: str, data_dir: str | os.PathLike, trial: int | None = None,
              num_queries: int = 8, top_k: int = 10, device: str | torch.device | None = None,
              batch_size: int = 64) -> RankList:
    """The rank list of ``model`` on the dataset's per-epoch setting in ``trial`` (default: the first)."""
    sets = trial_sets(dataset, data_dir, trial)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    query = sets.query.subset(spread_queries(sets.query.pids, num_queries))
    feats = [extract_features_uint8(model, images, side.modal, batch_size=batch_size, device=device).cpu().numpy()
             for images, side in ((query.images, sets.setting.query), (sets.gallery.images, sets.setting.gallery))]
    index, sim = top_matches(*feats, sets.excluded(query), top_k)  # feats: query [R, 2048], gallery [G, 2048]
    safe = np.maximum(index, 0)  # [R, K]
    images = np.asarray(sets.gallery.images)[safe]  # [R, K, H, W, 3]
    images[index < 0] = 0
    return RankList(title=sets.title, query_images=np.asarray(query.images), query_pids=query.pids,
                    query_cams=query.cams, gallery_images=images,
                    gallery_pids=np.where(index >= 0, sets.gallery.pids[safe], -1), index=index,
                    similarity=sim, gallery_size=len(sets.gallery))


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


@dataclass
class Layout:
    """Pixel geometry of a drawn rank list: a title band, then one row of cells per query."""

    image_size: tuple[int, int]  # (height, width) of a drawn image
    cell_size: tuple[int, int]  # (height, width) of a cell: framed image and two text lines
    line_height: int
    columns: int  # query + top-k
    rows: int

    @property
    def header(self) -> int:
        return 2 * self.line_height + GAP

    @property
    def width(self) -> int:
        return self.cell_x(self.columns - 1) + self.cell_size[1] + GAP

    @property
    def height(self) -> int:
        return self.header + self.rows * (self.cell_size[0] + GAP) + GAP

    def cell_x(self, column: int) -> int:
        """Left edge of ``column`` (0: the query, further apart from the matches)."""
        return GAP if column == 0 else GAP + self.cell_size[1] + 3 * GAP + (column - 1) * (self.cell_size[1] + GAP)

    def frame_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` (inclusive) of the frame around the image of ``row``, ``column``."""
        img_h, img_w = self.image_size
        x0 = self.cell_x(column) + (self.cell_size[1] - img_w - 2 * BORDER) // 2
        y0 = self.header + row * (self.cell_size[0] + GAP)
        return x0, y0, x0 + img_w + 2 * BORDER - 1, y0 + img_h + 2 * BORDER - 1


def layout(ranks: RankList, font: ImageFont.ImageFont | None = None) -> Layout:
    """Where :func:`draw_rank_list` puts everything: images scaled up by an integer factor to at least
    ``MIN_IMAGE_HEIGHT`` pixels, cells wide enough for their text."""
    font = font or _font()
    height, width = ranks.query_images.shape[1:3]
    scale = max(1, math.ceil(MIN_IMAGE_HEIGHT / height))
    img_h, img_w = height * scale, width * scale
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Ag#0", font=font)[3]) + 3
    cell_w = max(img_w + 2 * BORDER, int(probe.textlength("#10 -0.000", font=font)) + 4)
    cell_h = img_h + 2 * BORDER + 2 * line_h + 2
    return Layout((img_h, img_w), (cell_h, cell_w), line_h, ranks.index.shape[1] + 1, len(ranks.index))


def draw_rank_list(ranks: RankList, path: str | os.PathLike) -> None:
    """``ranks`` as a PNG file, written atomically."""
    font = _font()
    grid = layout(ranks, font)
    img_h, img_w = grid.image_size
    canvas = Image.new("RGB", (grid.width, grid.height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 2), f"{ranks.title}: top {ranks.index.shape[1]} of {ranks.gallery_size} gallery images "
              f"per query", fill="black", font=font)
    draw.text((GAP, 2 + grid.line_height), "green frame: same identity as the query; red: another identity; "
              "under each image: rank, similarity, identity" if ranks.colored else
              "under each image: rank, cosine similarity, name", fill="black", font=font)

    def cell(row: int, column: int, image: np.ndarray | None, color: tuple, lines: tuple[str, str]) -> None:
        x0, y0, x1, y1 = grid.frame_box(row, column)
        draw.rectangle([x0, y0, x1, y1], fill=color)
        if image is not None:
            canvas.paste(Image.fromarray(image).resize((img_w, img_h), Image.BICUBIC), (x0 + BORDER, y0 + BORDER))
        for n, text in enumerate(lines):
            while len(text) > 1 and draw.textlength(text, font=font) > grid.cell_size[1] - 2:
                text = text[1:]  # a long name keeps its end
            tx = grid.cell_x(column) + (grid.cell_size[1] - int(draw.textlength(text, font=font))) // 2
            draw.text((tx, y1 + 2 + n * grid.line_height), text, fill=color if ranks.colored else "black", font=font)

    for r in range(grid.rows):
        cell(r, 0, ranks.query_images[r], QUERY, ("query", ranks.query_text[r] if ranks.query_text else
                                                  f"id {ranks.query_pids[r]} cam {ranks.query_cams[r]}"))
        for j in range(grid.columns - 1):
            if ranks.index[r, j] < 0:
                cell(r, j + 1, None, EMPTY, (f"#{j + 1}", "none left"))
            else:
                cell(r, j + 1, ranks.gallery_images[r, j], EMPTY if not ranks.colored else
                     SAME if ranks.matches[r, j] else OTHER, (f"#{j + 1} {ranks.similarity[r, j]:.3f}",
                     ranks.gallery_text[r][j] if ranks.gallery_text else f"id {ranks.gallery_pids[r, j]}"))

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write(path, buffer.getbuffer())


def write_rank_list(model: nn.Module, dataset: str, data_dir: str | os.PathLike, path: str | os.PathLike,
                    trial: int | None = None, num_queries: int = 8, top_k: int = 10,
                    device: str | torch.device | None = None, batch_size: int = 64) -> None:
    """The rank list of ``model`` (:func:`compute_rank_list`) drawn into ``path``."""
    draw_rank_list(compute_rank_list(model, dataset, data_dir, trial, num_queries, top_k, device, batch_size), path)


def draw_search(path: str | os.PathLike, title: str, queries: list, gallery: list, index: np.ndarray,
                sim: np.ndarray, ids_from_folders: bool, size: tuple[int, int]) -> None:
    """search.py's picture: image files ``queries`` and their matches ``index`` [R, K] in ``gallery``, framed by
    identity (an image's folder name) with ``ids_from_folders``, else grey with file names."""
    ids = {p: p.parent.name for p in [*queries, *gallery]} if ids_from_folders else None
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
