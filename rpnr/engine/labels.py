"""One epoch's pseudo labels and cluster memories (DESIGN.md sections 3 and 4)."""

import dataclasses

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor, nn

from rpnr.common.errors import PseudoLabelError
from rpnr.data.prepared import ImageSet
from rpnr.engine.distributed import SINGLE, ProcessGroup
from rpnr.engine.settings import TrainConfig
from rpnr.evaluation import extract_features_uint8
from rpnr.matching import MATCHERS, hybrid_centers
from rpnr.memory import ClusterMemory
from rpnr.pseudo_labels import calibrate_labels, cluster_centers, cluster_features

MODALITY_NAMES = {"rgb": "visible", "ir": "infrared"}


@dataclasses.dataclass
class ModalityLabels:
    """One modality's pseudo labels of an epoch."""

    cluster: np.ndarray  # int64 [N] DBSCAN labels (-1 = outlier)
    train: np.ndarray  # int64 [N] training labels (NPC-calibrated in stage 2)
    centers: Tensor  # [K, 2048] cluster means of the DBSCAN labels
    relabeled: int | None  # samples whose label NPC changed (None: NPC off)
    purity: float  # fraction of labelled samples agreeing with their cluster's majority identity
    ari: float  # adjusted Rand index of the labelled samples' labels against their identities
    nmi: float  # normalised mutual information of the same

    @property
    def num_clusters(self) -> int:
        return int(self.centers.size(0))

    @property
    def num_outliers(self) -> int:
        return int((self.cluster < 0).sum())


@dataclasses.dataclass
class EpochLabels:
    """An epoch's pseudo labels of both modalities and, in stage 2, the OT partners."""

    rgb: ModalityLabels
    ir: ModalityLabels
    r2i: np.ndarray | None  # [K_rgb] IR partner of each RGB cluster (stage 2)
    i2r: np.ndarray | None  # [K_ir] RGB partner of each IR cluster (stage 2)

    def to(self, device: torch.device) -> "EpochLabels":
        """The same labels with the cluster centres on ``device``."""
        return EpochLabels(dataclasses.replace(self.rgb, centers=self.rgb.centers.to(device)),
                           dataclasses.replace(self.ir, centers=self.ir.centers.to(device)), self.r2i, self.i2r)


def label_purity(labels: np.ndarray, pids: np.ndarray) -> float:
    """Fraction of non-outliers whose ground-truth identity is the majority one of their cluster."""
    keep = labels >= 0
    if not keep.any():
        return 0.0
    pairs = np.stack([labels[keep], np.asarray(pids)[keep]], 1)  # [n, 2]
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    majority = np.zeros(int(labels.max()) + 1, dtype=np.int64)  # per cluster: the count of its majority identity
    np.maximum.at(majority, uniq[:, 0], counts)
    return float(majority.sum() / keep.sum())


def modality_labels(features: Tensor, pids: np.ndarray, eps: float, k1: int, k2: int, min_samples: int,
                    calibrate: bool, top_k: int) -> ModalityLabels:
    """DBSCAN on the k-reciprocal Jaccard distance, cluster centres, and NPC when ``calibrate``."""
    cluster = np.asarray(cluster_features(features, eps, k1, k2, min_samples), dtype=np.int64)
    centers = cluster_centers(features, cluster)  # [K, 2048]
    train = np.asarray(calibrate_labels(features, cluster, top_k), dtype=np.int64) if calibrate else cluster
    relabeled = int((train != cluster).sum()) if calibrate else None
    keep = train >= 0  # scored like purity: the labelled samples
    ari, nmi = ((float(score(np.asarray(pids)[keep], train[keep])) if keep.any() else 0.0)
                for score in (adjusted_rand_score, normalized_mutual_info_score))
    return ModalityLabels(cluster=cluster, train=train, centers=centers, relabeled=relabeled,
                          purity=label_purity(train, pids), ari=ari, nmi=nmi)


def check_labels(labels: ModalityLabels, modality: str, epoch: int, eps: float, batch_size: int,
                 num_instances: int) -> None:
    """Raise :class:`PseudoLabelError` when the labels cannot fill one batch of identities, or give fewer than two
    clusters (one cluster makes the memory loss exactly 0: nothing to contrast)."""
    need = max(batch_size // num_instances, 2)
    identities = int(np.unique(labels.train[labels.train >= 0]).size)
    if labels.num_clusters >= need and identities >= need:
        return
    # mostly outliers: eps is too small; few clusters but few outliers: eps merges identities
    direction = "larger" if 2 * labels.num_outliers >= len(labels.cluster) else "smaller"
    found = (f"have {labels.num_clusters} clusters (" if labels.num_clusters < need else
             f"keep {identities} identities after calibration ({labels.num_clusters} clusters, ")
    why = f"for a batch of {batch_size} with {num_instances} instances" if batch_size // num_instances >= 2 else \
        "(each modality needs two clusters to contrast)"
    raise PseudoLabelError(f"epoch {epoch}: {MODALITY_NAMES[modality]} pseudo labels {found}{labels.num_outliers} "
                           f"outliers, eps {eps:g}); need at least {need} {why} - try a {direction} --eps")


def extract_train_features(model: nn.Module, images: np.ndarray, modal: str, batch_size: int,
                           device: torch.device, desc: str, group: ProcessGroup = SINGLE,
                           precision: str = "fp32") -> Tensor:
    """Clustering features: flip-averaged eval embeddings, NOT re-normalised (release): [N, 2048] float32.

    Computed without bf16 autocast unless ``precision`` is "bf16" (clustering is sensitive
    to small feature changes); under torchrun sharded over the ranks and gathered (DESIGN.md section 8).
    """
    batches = group.shard(-(-len(images) // batch_size))
    part = images[batches.start * batch_size:batches.stop * batch_size]  # [N_rank, H, W, 3]
    with group.progress(total=len(part), desc=desc, unit="img", leave=False) as bar:
        feats = extract_features_uint8(model, part, modal, batch_size=batch_size, flip=True, normalize=False,
                                       device=device, progress=bar.update, precision=precision)
    return group.gather_rows(feats.float())


def compute_labels(feats_rgb: Tensor, feats_ir: Tensor, train_rgb: ImageSet, train_ir: ImageSet,
                   cfg: TrainConfig, epoch: int) -> EpochLabels:
    """Pseudo labels of both modalities (NPC when the run uses it), checked, with the clusters' partners (the
    ``--matcher``'s, when the run uses OTPM); centres on the CPU."""
    ablation = cfg.ablation
    rgb, ir = (modality_labels(feats, images.pids, cfg.eps, cfg.k1, cfg.k2, cfg.min_samples, ablation.npc, cfg.top_k)
               for feats, images in ((feats_rgb, train_rgb), (feats_ir, train_ir)))
    check_labels(ir, "ir", epoch + 1, cfg.eps, cfg.batch_size, cfg.num_instances)
    check_labels(rgb, "rgb", epoch + 1, cfg.eps, cfg.rgb_batch_size, cfg.num_instances)
    r2i, i2r = MATCHERS[cfg.matcher](rgb.centers, ir.centers, cfg) if ablation.otpm else (None, None)
    return EpochLabels(rgb, ir, r2i, i2r).to(torch.device("cpu"))


def build_memories(labels: EpochLabels, temp: float, momentum: float, hybrid: bool = False) -> dict:
    """The epoch's CMhcl memories: "rgb", "ir" and, with ``hybrid`` (stage 2 with MHL), "hybrid"."""
    rgb, ir = labels.rgb, labels.ir
    memories = {"rgb": ClusterMemory.from_centers(rgb.centers, temp, momentum, "CMhcl"),
                "ir": ClusterMemory.from_centers(ir.centers, temp, momentum, "CMhcl")}
    if not hybrid:
        return memories
    present = np.isin(np.arange(ir.num_clusters), ir.train)  # [K_ir] clusters that keep a member
    # quirk (release): hybrid rows of IR clusters left empty by calibration stay zero
    centers = hybrid_centers(rgb.centers, ir.centers, labels.i2r, present=present)  # [K_ir, 2048]
    memories["hybrid"] = ClusterMemory.from_centers(centers, temp, momentum, "CMhcl")
    return memories
