"""The datasets: the registry, raw layouts (``sysu``, ``regdb``, ``llcm``, shared pieces in ``raw``), preparing and
reading prepared folders, the published figures, the training sampler and augmentation, and synthetic trees."""
