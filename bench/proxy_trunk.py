"""A stand-in 'pretrained trunk' when no ImageNet ResNet-50 file is at hand.

Trains a torchvision ResNet-50 with identity labels (cross-entropy) on a prepared synthetic RegDB
set, then saves its weights in torchvision layout (no ``fc``) for ``train.py --imagenet``. Use a
synthetic set generated with another seed than the one you then train RPNR on.

    python -m rpnr.data.synthetic --dataset regdb --out /tmp/raw5 --seed 5 --ids 60
    python prepare_regdb.py --data-dir /tmp/raw5 --output-dir /tmp/p5 --height 64 --width 32
    python bench/proxy_trunk.py --data-dir /tmp/p5 --out /tmp/proxy.pth --iters 400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpnr.data.augment import apply_view, draw_view  # noqa: E402
from rpnr.engine.loop import load_train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="prepared synthetic RegDB folder")
    parser.add_argument("--out", required=True, help="weights file to write (torchvision ResNet-50 layout)")
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    rgb, ir = load_train(args.data_dir, "regdb", trial=1)
    images = np.concatenate([rgb.images, ir.images])  # [N, H, W, 3] uint8
    _, labels = np.unique(np.concatenate([rgb.pids, ir.pids]), return_inverse=True)
    height, width = images.shape[1:3]
    net = torchvision.models.resnet50(num_classes=int(labels.max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
    start = time.time()
    for it in range(args.iters):
        idx = rng.integers(0, len(images), args.batch_size)
        x = apply_view(torch.from_numpy(images[idx]), draw_view(len(idx), height, width), height, width)  # [B,3,H,W]
        loss = F.cross_entropy(net(x), torch.from_numpy(labels[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % 50 == 0 or it == args.iters - 1:
            print(f"iter {it}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
