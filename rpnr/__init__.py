"""RPNR: Robust Pseudo-label learning with Neighbor Relation for unsupervised
visible-infrared person re-identification (Yin, Shi et al., ACM MM 2024).

Every module of the package, with what it holds: the table in the README's "Library" section (a test keeps it
complete).
"""

__all__ = ["FeatureExtractor"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``rpnr.FeatureExtractor``, imported on first use (so that ``import rpnr.data...`` does not load torch)."""
    if name == "FeatureExtractor":
        from rpnr.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'rpnr' has no attribute {name!r}")
