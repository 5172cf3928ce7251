"""Datasets: raw SYSU-MM01 / RegDB layouts (``sysu``, ``regdb``), prepared arrays (``prepared``),
synthetic raw trees (``synthetic``), and the training sampler and augmentation."""
