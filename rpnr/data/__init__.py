"""Datasets: raw SYSU-MM01 / RegDB / LLCM layouts (``sysu``, ``regdb``, ``llcm``; shared pieces in ``raw_layout``),
prepared arrays (``prepared``), synthetic raw trees (``synthetic``), and the training sampler and augmentation."""
