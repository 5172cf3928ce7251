"""Tools around trained models and runs: the FeatureExtractor of your own images (search.py, export.py), the report
from runs to a table (report.py) and the t-SNE picture (``python -m rpnr.tsne``)."""
