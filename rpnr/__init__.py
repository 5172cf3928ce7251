"""RPNR: Robust Pseudo-label learning with Neighbor Relation for unsupervised visible-infrared person
re-identification (Yin, Shi et al., ACM MM 2024).

The method is at the top: ``pseudo_labels``, ``matching``, ``memory``, ``losses``, ``training`` (the objective),
``models`` and ``evaluation`` (with ``metrics``). The rest lives in rooms named for their role: ``common`` (errors,
files, checkpoint files, the commands' entry point), ``data`` (the registry, raw and prepared data, sampler,
augmentation, synthetic data), ``engine`` (settings, the run folder, the epoch loop, the tests of a run) and
``tools`` (FeatureExtractor, report, t-SNE). docs/DESIGN.md section 15 says who may import whom.
"""

__all__ = ["FeatureExtractor"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``rpnr.FeatureExtractor``, imported on first use (so that ``import rpnr.data...`` does not load torch)."""
    if name == "FeatureExtractor":
        from rpnr.tools.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'rpnr' has no attribute {name!r}")
