"""Tools around trained models and runs: FeatureExtractor, report, t-SNE, the stand-in start."""
