"""A synthetic stand-in for the ImageNet start (docs/training.md, "A stand-in start"): a torchvision ResNet-50 trained
to tell synthetic colour-grid identities apart, saved in torchvision's layout for ``train.py --imagenet``. It knows
nothing of real images; it only lets the demo and the learning check start from something better than chance offline.
``python -m rpnr.tools.stand_in --out FILE``."""

import inspect
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from rpnr.common.checkpoints import save_checkpoint
from rpnr.common.command import Parser, require_positive, run_command, script
from rpnr.common.files import check_outputs
from rpnr.data.synthetic import background, make_identity, render
from rpnr.evaluation import uint8_to_normalized


def stand_in_batch(identities: list, labels: np.ndarray, rng: np.random.Generator, height: int, width: int,
                   tint: np.ndarray) -> torch.Tensor:
    """uint8 [B, height, width, 3]: each label's identity at 128x64, grey half the time, an 80-100 % crop resized."""
    images = []
    for label in labels:
        img = Image.fromarray(render(identities[label], rng, 128, 64, False, tint))
        img = img.convert("L").convert("RGB") if rng.random() < 0.5 else img  # grey half the time
        h, w = (int(n * rng.uniform(0.8, 1.0)) for n in (128, 64))
        top, left = int(rng.integers(0, 129 - h)), int(rng.integers(0, 65 - w))
        images.append(np.asarray(img.resize((width, height), Image.BILINEAR, box=(left, top, left + w, top + h))))
    return torch.from_numpy(np.stack(images))


def train_stand_in(out: str | os.PathLike, classes: int = 400, steps: int = 150, batch_size: int = 64,
                   height: int = 32, width: int = 16, seed: int = 0, log=print) -> dict:
    """Train the stand-in (SGD 0.1 with Nesterov momentum, 40 warm-up steps then cosine, label smoothing 0.1) on
    ``classes`` identities of their own seed stream and save it to ``out`` without ``fc``: its first and last loss."""
    require_positive(("--classes", classes), ("--steps", steps), ("--batch-size", batch_size))
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 29])  # not the identities of any synthetic tree (those draw [seed, pid])
    identities = [make_identity(np.random.default_rng([seed, 29, c])) for c in range(classes)]
    tint = background(rng)
    net = torchvision.models.resnet50(num_classes=classes, zero_init_residual=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)
    warm = min(40, steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warm if s < warm else
                                                 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    losses, start = [], time.perf_counter()

    def draw() -> tuple[np.ndarray, torch.Tensor]:
        labels = rng.integers(0, classes, size=batch_size)
        return labels, stand_in_batch(identities, labels, rng, height, width, tint)

    with ThreadPoolExecutor(1) as pool:  # the next batch is drawn while this one trains (the same draws in turn)
        ahead = pool.submit(draw)
        for step in range(1, steps + 1):
            labels, images = ahead.result()
            if step < steps:
                ahead = pool.submit(draw)
            _train_step(net, optimizer, schedule, uint8_to_normalized(images), labels, losses)
            if step % 50 == 0 or step == steps:
                log(f"stand-in start: step {step}/{steps}, loss {losses[-1]:.3f} ({time.perf_counter() - start:.0f} s)")
    save_checkpoint({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, out)
    return {"first_loss": losses[0], "last_loss": losses[-1]}


def _train_step(net, optimizer, schedule, x: torch.Tensor, labels: np.ndarray, losses: list) -> None:
    """One SGD step on ``x`` [B, 3, H, W]; its loss appended to ``losses``."""
    loss = F.cross_entropy(net(x), torch.from_numpy(labels), label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    losses.append(loss.item())


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m rpnr.tools.stand_in", description="Train the synthetic stand-in start.")
    parser.add_argument("--out", required=True, help="weights file to write (give it to train.py --imagenet)")
    sizes = {n: p.default for n, p in inspect.signature(train_stand_in).parameters.items() if n not in ("out", "log")}
    for name, default in sizes.items():  # train_stand_in's defaults, written once
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"(default: {default})")
    args = parser.parse_args(argv)

    def work() -> None:
        check_outputs(files=[("--out", args.out)])
        result = train_stand_in(args.out, **{name: getattr(args, name) for name in sizes})
        print(f"stand-in start written to {args.out} (synthetic identities only; loss {result['first_loss']:.2f} -> "
              f"{result['last_loss']:.2f})")

    return run_command(work, "rpnr.tools.stand_in")


if __name__ == "__main__":
    script(main)
