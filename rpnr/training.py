"""The per-iteration objective of both stages as one table of terms (DESIGN.md section 5, docs/extending.md)."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from rpnr.losses import neighbor_relation_loss
from rpnr.memory import ClusterMemory


@dataclass
class TermInputs:
    """What a term computes from: the batch, the epoch's memories and cluster partners, the run's settings."""

    f_rgb: Tensor  # [2 B_rgb, d] both visible views
    f_ir: Tensor  # [B_ir, d]
    y_rgb: Tensor  # [2 B_rgb] pseudo labels of both views
    y_ir: Tensor  # [B_ir]
    memories: Mapping[str, ClusterMemory]  # "rgb", "ir" and, when a term needs it, "hybrid"
    r2i: object  # [K_rgb] infrared partner of each visible cluster (None without the matching)
    i2r: object  # [K_ir] visible partner of each infrared cluster
    epoch: int  # 0-based: the cross-modal terms alternate their direction
    settings: object

    def partners(self, table, labels: Tensor) -> Tensor:
        """Labels mapped through a partner array (``r2i`` or ``i2r``): [B] -> [B]."""
        return torch.as_tensor(table, dtype=torch.long, device=labels.device)[labels.long()]


def ir_term(x: TermInputs) -> Tensor:
    return x.memories["ir"](x.f_ir, x.y_ir)


def rgb_term(x: TermInputs) -> Tensor:
    return x.memories["rgb"](x.f_rgb, x.y_rgb)


def cross_term(x: TermInputs) -> Tensor:
    """Odd epochs: infrared features against the visible memory; even epochs the reverse (OTPM's partners)."""
    if x.epoch % 2 == 1:
        return x.memories["rgb"](x.f_ir, x.partners(x.i2r, x.y_ir))
    return x.memories["ir"](x.f_rgb, x.partners(x.r2i, x.y_rgb))


def hybrid_term(x: TermInputs) -> Tensor:
    """The hybrid memory against the infrared features (odd epochs) or the visible ones, by their partners (even)."""
    if x.epoch % 2 == 1:
        return x.memories["hybrid"](x.f_ir, x.y_ir)
    return x.memories["hybrid"](x.f_rgb, x.partners(x.r2i, x.y_rgb))


def nrl_term(x: TermInputs) -> Tensor:
    s = x.settings
    return (neighbor_relation_loss(x.f_rgb, x.f_rgb.detach(), s.sigma, s.delta)
            + neighbor_relation_loss(x.f_ir, x.f_ir.detach(), s.sigma, s.delta))


@dataclass(frozen=True)
class Term:
    """One term of the objective."""

    name: str
    compute: Callable[[TermInputs], Tensor]
    weight: str | None = None  # the setting holding its weight; None: 1
    module: str | None = None  # the paper's module it belongs to, which "--no-<module>" leaves out
    stages: tuple[str, ...] = ("baseline", "rpnr")  # the stages that compute it
    needs: tuple[str, ...] = ()  # "matching" (the clusters' partners), "hybrid" (the hybrid memory)
    optional: bool = False  # computed only when its weight is not 0 (a term added "default off")


# in the release's order: memory updates run in the reverse order during backward (DESIGN.md section 4)
TERMS = (Term("ir", ir_term), Term("rgb", rgb_term),
         Term("cross", cross_term, "w_cross", "otpm", ("rpnr",), ("matching",)),
         Term("hybrid", hybrid_term, "w_hybrid", "mhl", ("rpnr",), ("matching", "hybrid")),
         Term("nrl", nrl_term, "w_nrl", "nrl", ("rpnr",)))


def active_terms(settings, modules: Mapping[str, bool]) -> list[Term]:
    """The terms of :data:`TERMS` that a run computes: its stage's, their ``modules`` on, needs met, weight not 0."""
    have = {"matching": modules.get("otpm", False), "hybrid": True}
    return [t for t in TERMS if settings.stage in t.stages and (t.module is None or modules.get(t.module, False))
            and all(have[n] for n in t.needs) and not (t.optional and not getattr(settings, t.weight))]


def loss_weights(settings, terms: list[Term]) -> dict:
    """Each term of :data:`TERMS` -> its weight in the total, None for a term not computed."""
    on = {t.name for t in terms}
    return {t.name: (getattr(settings, t.weight) if t.weight else 1.0) if t.name in on else None for t in TERMS}


def objective(x: TermInputs, terms: list[Term]) -> tuple[Tensor, dict]:
    """(the weighted sum of ``terms``, computed in table order, {name: 0-dim tensor with its graph})."""
    parts, total = {}, None
    for term in terms:
        value = parts[term.name] = term.compute(x)
        value = value if term.weight is None else getattr(x.settings, term.weight) * value
        total = value if total is None else total + value
    return total, parts


def stage2_loss(f_rgb: Tensor, f_ir: Tensor, y_rgb: Tensor, y_ir: Tensor, memories: Mapping[str, ClusterMemory],
                r2i, i2r, epoch: int, w_cross: float = 0.25, w_hybrid: float = 0.5, w_nrl: float = 10.0,
                sigma: float = 1.0, delta: float = 1.0, cross: bool = True, hybrid: bool = True,
                nrl: bool = True) -> tuple[Tensor, dict]:
    """(the RPNR objective, {term: float}), DESIGN.md section 7; ``cross``, ``hybrid``, ``nrl`` False: left out."""
    settings = SimpleNamespace(w_cross=w_cross, w_hybrid=w_hybrid, w_nrl=w_nrl, sigma=sigma, delta=delta)
    terms = [t for t in TERMS if {"cross": cross, "hybrid": hybrid, "nrl": nrl}.get(t.name, True)]
    total, parts = objective(TermInputs(f_rgb, f_ir, y_rgb, y_ir, memories, r2i, i2r, epoch, settings), terms)
    return total, {name: value.item() for name, value in parts.items()}
