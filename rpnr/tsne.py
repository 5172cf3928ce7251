"""``python -m rpnr.tsne``: the t-SNE picture of a trained model's test embeddings (:mod:`rpnr.tools.tsne`)."""

from rpnr.common.command import script
from rpnr.tools.tsne import main

if __name__ == "__main__":
    script(main)
