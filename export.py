"""ONNX export of one modality stream of a trained model (needs onnx, onnxruntime and onnxscript; nothing else does).

    python export.py --checkpoint logs/regdb_s2/1/model_best.pth.tar --modality visible --onnx regdb_visible.onnx

The ONNX model's input "images" is uint8 [N, H, W, 3] RGB images already at the checkpoint's size (N dynamic);
its output "embeddings" is float32 [N, 2048], the test embedding (ImageNet normalisation, the modality's stem and
the shared trunk in eval mode, flip average, L2 normalisation), as rpnr.FeatureExtractor computes it. The file
is checked with onnxruntime against the FeatureExtractor on random images at two batch sizes.
"""

import argparse
import sys

import numpy as np
import torch
from torch import Tensor, nn

from rpnr.checkpoint import CheckpointError
from rpnr.distributed import DistributedError
from rpnr.evaluation import uint8_to_normalized
from rpnr.extractor import MODALITIES, FeatureExtractor, stem_of
from rpnr.files import atomic_write, error_line
from rpnr.models import l2_normalize

TOLERANCE = 1e-4  # largest difference from PyTorch accepted


class Stream(nn.Module):
    """One modality of ``model`` (in eval mode): uint8 [N, H, W, 3] -> the test embedding [N, 2048]."""

    def __init__(self, model: nn.Module, stem: str):
        super().__init__()
        self.model, self.stem = model.eval(), stem

    def forward(self, images: Tensor) -> Tensor:
        x = uint8_to_normalized(images)  # [N, 3, H, W], as the test pipeline
        return l2_normalize((self.model.embed(x, self.stem) + self.model.embed(torch.flip(x, dims=[3]), self.stem)) / 2)


def onnx_bytes(extractor: FeatureExtractor, modality: str) -> bytes:
    """The serialised ONNX model of ``modality``'s stream (torch.export-based exporter, dynamic batch size); the
    extractor on the CPU."""
    stream = Stream(extractor.model, stem_of(modality)).eval()
    example = torch.zeros(2, extractor.height, extractor.width, 3, dtype=torch.uint8)
    program = torch.onnx.export(stream, (example,), input_names=["images"], output_names=["embeddings"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def largest_difference(model: bytes, extractor: FeatureExtractor, modality: str, batch_sizes=(1, 3)) -> float:
    """max |onnxruntime - FeatureExtractor| over random uint8 images at each of ``batch_sizes``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng, worst = np.random.default_rng(0), 0.0
    for n in batch_sizes:
        images = rng.integers(0, 256, (n, extractor.height, extractor.width, 3), dtype=np.uint8)
        out = session.run(["embeddings"], {"images": images})[0]  # [n, 2048]
        worst = max(worst, float(np.abs(out - extractor(list(images), modality).numpy()).max()))
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (ours or the official release's)")
    parser.add_argument("--modality", required=True, type=str.lower, choices=list(MODALITIES))
    parser.add_argument("--onnx", required=True, help="the ONNX file to write")
    parser.add_argument("--check", type=int, default=3, metavar="N", help="check batch sizes 1 and N (default 3)")
    parser.add_argument("--height", type=int, default=None, help="image height, for a checkpoint that records none")
    parser.add_argument("--width", type=int, default=None, help="image width, for a checkpoint that records none")
    args = parser.parse_args(argv)
    try:
        if args.check < 1:
            raise ValueError(f"--check must be positive, got {args.check}")
        extractor = FeatureExtractor(args.checkpoint, "cpu", height=args.height, width=args.width)
        model = onnx_bytes(extractor, args.modality)
        worst = largest_difference(model, extractor, args.modality, sorted({1, args.check}))
        print(f"onnxruntime vs PyTorch at batch sizes {' and '.join(map(str, sorted({1, args.check})))}: "
              f"largest difference {worst:.3g}")
        if not worst <= TOLERANCE:
            raise ValueError(f"the ONNX model differs from PyTorch by {worst:.3g} (> {TOLERANCE:g}); not written")
        atomic_write(args.onnx, model)
    except (CheckpointError, DistributedError, ValueError, OSError) as exc:
        print(f"export.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {args.onnx}: {args.modality} images uint8 [N, {extractor.height}, {extractor.width}, 3] -> "
          f"embeddings float32 [N, 2048]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
