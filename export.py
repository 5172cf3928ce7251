"""ONNX export of one modality stream of a trained model (needs onnx, onnxruntime and onnxscript; nothing else does).

    python export.py --checkpoint logs/regdb_s2/1/model_best.pth.tar --modality visible --onnx regdb_visible.onnx

The ONNX model's input "images" is uint8 [N, H, W, 3] RGB images already at the checkpoint's size (N dynamic);
its output "embeddings" is float32 [N, 2048], the test embedding (ImageNet normalisation, the modality's stem and
the shared trunk in eval mode, flip average, L2 normalisation), as rpnr.FeatureExtractor computes it. The file
is checked with onnxruntime against the FeatureExtractor on random images at two batch sizes.
"""

import argparse

from rpnr.common.command import Parser, require_positive, run_command, script
from rpnr.common.errors import UsageError
from rpnr.common.files import atomic_write, check_outputs
from rpnr.tools.extractor import MODALITIES, FeatureExtractor, largest_difference, onnx_bytes

TOLERANCE = 1e-4  # largest difference from PyTorch accepted


def export(argv) -> None:
    parser = Parser(prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (ours or the official release's)")
    parser.add_argument("--modality", required=True, type=str.lower, choices=list(MODALITIES))
    parser.add_argument("--onnx", required=True, help="the ONNX file to write")
    parser.add_argument("--check", type=int, default=3, metavar="N", help="check batch sizes 1 and N (default 3)")
    parser.add_argument("--height", type=int, default=None, help="image height, for a checkpoint that records none")
    parser.add_argument("--width", type=int, default=None, help="image width, for a checkpoint that records none")
    args = parser.parse_args(argv)
    require_positive(("--check", args.check))
    check_outputs([(f"--onnx {args.onnx}", args.onnx)], inputs=[(f"--checkpoint {args.checkpoint}", args.checkpoint)])
    extractor = FeatureExtractor(args.checkpoint, "cpu", height=args.height, width=args.width)
    model = onnx_bytes(extractor, args.modality)
    sizes = sorted({1, args.check})
    worst = largest_difference(model, extractor, args.modality, sizes)
    print(f"onnxruntime vs PyTorch at batch sizes {' and '.join(map(str, sizes))}: largest difference {worst:.3g}")
    if not worst <= TOLERANCE:
        raise UsageError(f"the ONNX model differs from PyTorch by {worst:.3g} (> {TOLERANCE:g}); not written")
    atomic_write(args.onnx, model)
    print(f"wrote {args.onnx}: {args.modality} images uint8 [N, {extractor.height}, {extractor.width}, 3] -> "
          f"embeddings float32 [N, 2048]")


def main(argv=None) -> int:
    return run_command(lambda: export(argv), "export.py")


if __name__ == "__main__":
    script(main)
