"""RPNR: Robust Pseudo-label learning with Neighbor Relation for unsupervised
visible-infrared person re-identification (Yin, Shi et al., ACM MM 2024).

Modules: ``data`` (datasets, sampler, augmentation), ``models`` (two-stream AGW
ResNet-50), ``pseudo_labels`` (Jaccard + DBSCAN + NPC), ``matching`` (OTPM and
hybrid centres), ``memory`` (cluster memories), ``losses`` (NRL), ``training``
(per-iteration objectives), ``trainer`` (the epoch loop), ``distributed`` (the torchrun
process group), ``evaluation`` (features and metrics), ``protocols`` (the test protocols),
``results`` (best beside last), ``rank_list`` (rank-list pictures), ``checkpoint`` (safe I/O).
"""

__version__ = "0.1.0"
