"""The datasets: registry, raw layouts, prepared folders, published figures, sampler, augmentation."""
