"""Ten-trial test of a trained model on prepared SYSU-MM01, RegDB or LLCM data.

    python test.py --dataset sysu --data-dir data/sysu_288x144 --checkpoint logs/sysu/model_best.pth --mode all
    python test.py --dataset regdb --data-dir data/regdb_288x144 --checkpoint 'logs/regdb_{trial}/model_best.pth'
    python test.py --dataset llcm --data-dir data/llcm_288x144 --checkpoint logs/llcm_s2/model_best.pth.tar

SYSU: query features once, galleries of trials 0..N-1, mean reported. RegDB: trials 1..N, each
with its own checkpoint when ``--checkpoint`` contains ``{trial}``, both directions. LLCM: both
directions (every test image of one modality against the sampled gallery of trials 0..N-1 in the
other), each test image embedded once.
Official release checkpoints load as they are. ``--ranks-png PATH`` also draws a rank list (top-10
gallery images of a few queries on the first trial: SYSU all-search, RegDB visible to thermal, LLCM
visible to infrared).
"""

import argparse
import os
import signal
import sys

import torch

from rpnr.checkpoint import CheckpointError, load_checkpoint
from rpnr.data.prepared import PreparedDataError, check_prepared
from rpnr.files import os_error_line, sha256_file, write_json
from rpnr.models import build_model, load_weights
from rpnr.protocols import (
    DIRECTIONS,
    LLCM_DIRECTIONS,
    evaluate_llcm_directions,
    evaluate_regdb_directions,
    evaluate_sysu,
    format_result,
    mean_results,
    to_percent,
    trial_checkpoint,
)
from rpnr.rank_list import write_rank_list

DIRECTION_LABEL = {"visible_to_thermal": "Visible to Thermal", "thermal_to_visible": "Thermal to Visible",
                   "visible_to_infrared": "Visible to Infrared", "infrared_to_visible": "Infrared to Visible"}


class UsageError(Exception):
    """A command-line value that cannot work (one-line message)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["sysu", "regdb", "llcm"], required=True)
    parser.add_argument("--data-dir", required=True,
                        help="prepared folder (prepare_sysu.py / prepare_regdb.py / prepare_llcm.py)")
    parser.add_argument("--checkpoint", required=True,
                        help="model checkpoint (ours or the official release's); RegDB: may contain {trial}")
    parser.add_argument("--mode", choices=["all", "indoor"], default="all", help="SYSU search mode")
    parser.add_argument("--trials", type=int, default=10, help="number of trials (SYSU, LLCM 0..N-1, RegDB 1..N)")
    parser.add_argument("--v2i-sampled-infrared-queries", action="store_true",
                        help="LLCM: compute visible to infrared as the LLCM release's test.py does (test_mode [2, 1]): "
                             "the sampled infrared gallery images of each trial are the queries and every visible "
                             "test image is the gallery, instead of every visible image as a query against the "
                             "sampled infrared gallery (default, as DMDL and CEIL). For comparisons with supervised "
                             "papers that used the release's script")
    parser.add_argument("--height", type=int, default=None, help="expected prepared height (checked)")
    parser.add_argument("--width", type=int, default=None, help="expected prepared width (checked)")
    parser.add_argument("--json", default=None, help="write the mean metrics (percent) to this file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ranks-png", default=None, metavar="PATH",
                        help="also draw a rank list PNG: one row per query, its top-10 gallery images of the first "
                             "trial framed green (same identity) or red (SYSU: all-search; RegDB: the trial-1 model, "
                             "visible to thermal; LLCM: visible to infrared)")
    parser.add_argument("--ranks-queries", type=int, default=8, metavar="N",
                        help="queries in the rank list, spread over identities (default 8)")
    return parser.parse_args(argv)


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def load_model(path: str, device: torch.device) -> torch.nn.Module:
    model = build_model("agw")
    load_weights(model, path)
    return model.to(device).eval()


def run_sysu(args, device: torch.device) -> dict:
    model = load_model(args.checkpoint, device)
    print(f"SYSU-MM01 {args.mode}-search, galleries of trials 0-{args.trials - 1}, checkpoint {args.checkpoint}")
    result = evaluate_sysu(model, args.data_dir, args.mode, range(args.trials), device, args.batch_size,
                           progress=True)
    for one in result["per_trial"]:
        print(format_result(one, f"Trial {one['trial']}:"))
    print(format_result(result, f"Mean of {args.trials} trials ({args.mode}-search):"))
    write_ranks(model, args, device)
    return to_percent(result)


def checkpoint_files(args) -> dict[int, str]:
    """The checkpoint of each tested trial (RegDB: ``{trial}`` in the path replaced); 0 for a single file."""
    if args.dataset != "regdb":
        return {0: args.checkpoint}
    return {t: trial_checkpoint(args.checkpoint, t) for t in range(1, args.trials + 1)}


def check_checkpoints(args, files: dict[int, str], manifest: dict) -> None:
    """Refuse a checkpoint trained on another dataset, and a RegDB model of trial t tested on other trials
    (they test on identities it trained on); warn about another training image size (DESIGN.md section 10)."""
    unrecorded = []
    for trial, path in files.items():
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}" + (f" (trial {trial})" if trial else ""))
        ckpt = load_checkpoint(path)
        if "dataset" not in ckpt:
            unrecorded.append(path)
            continue
        saved = ckpt.get("args", {})
        if ckpt["dataset"] != args.dataset:
            raise UsageError(f"{path} was trained on {ckpt['dataset']}, not {args.dataset}; test it with "
                             f"--dataset {ckpt['dataset']}")
        if trial and saved.get("trial", trial) != trial:
            hint = "" if "{trial}" in args.checkpoint else (" (put {trial} in --checkpoint to test each trial with "
                                                            "its own model, or pass --trials 1)")
            raise UsageError(f"{path} was trained on RegDB trial {saved['trial']}; testing it on trial {trial} "
                             f"would test it on identities it trained on{hint}")
        size = (saved.get("height"), saved.get("width"))
        if None not in size and size != (manifest["height"], manifest["width"]):
            print(f"warning: {path} was trained at {size[0]}x{size[1]} but {args.data_dir} holds "
                  f"{manifest['height']}x{manifest['width']} images")
    if unrecorded:
        print(f"note: {unrecorded[0]} records no dataset, trial or image size (an official release checkpoint?); "
              f"tested as given")


def write_ranks(model: torch.nn.Module, args, device: torch.device) -> None:
    """The rank list of ``--ranks-png`` (first trial), when asked for."""
    if args.ranks_png:
        write_rank_list(model, args.dataset, args.data_dir, args.ranks_png, num_queries=args.ranks_queries,
                        device=device, batch_size=args.batch_size)
        print(f"wrote rank list {args.ranks_png}")


def run_regdb(args, device: torch.device) -> dict:
    trials = range(1, args.trials + 1)
    paths = checkpoint_files(args)
    results = {d: [] for d in DIRECTIONS}
    for t in trials:
        model = load_model(paths[t], device)
        print(f"RegDB trial {t}, checkpoint {paths[t]}")
        both = evaluate_regdb_directions(model, args.data_dir, t, device, args.batch_size, progress=True)
        for d in DIRECTIONS:
            print(format_result(both[d], f"Trial {t} {DIRECTION_LABEL[d]}:"))
            results[d].append(both[d])
        if t == trials[0]:
            write_ranks(model, args, device)
    out = {}
    for d in DIRECTIONS:
        mean = mean_results(results[d])
        print(format_result(mean, f"Mean of {args.trials} trials {DIRECTION_LABEL[d]}:"))
        out[d] = to_percent(mean)
    return out


def run_llcm(args, device: torch.device) -> dict:
    model = load_model(args.checkpoint, device)
    variant = ("sampled infrared queries against every visible image, as the LLCM release's test.py"
               if args.v2i_sampled_infrared_queries else "every visible image against the sampled infrared gallery")
    print(f"LLCM, galleries of trials 0-{args.trials - 1}, checkpoint {args.checkpoint}; visible to infrared: "
          f"{variant}")
    both = evaluate_llcm_directions(model, args.data_dir, range(args.trials), device, args.batch_size, progress=True,
                                    v2i_sampled_infrared_queries=args.v2i_sampled_infrared_queries)
    label = {d: DIRECTION_LABEL[d] for d in LLCM_DIRECTIONS}
    if args.v2i_sampled_infrared_queries:
        label["visible_to_infrared"] += " (sampled infrared queries)"
    for k in range(args.trials):
        for d in LLCM_DIRECTIONS:
            one = both[d]["per_trial"][k]
            print(format_result(one, f"Trial {one['trial']} {label[d]}:"))
    for d in LLCM_DIRECTIONS:
        print(format_result(both[d], f"Mean of {args.trials} trials {label[d]}:"))
    write_ranks(model, args, device)
    return {d: to_percent(both[d]) for d in LLCM_DIRECTIONS}


RUNS = {"sysu": run_sysu, "regdb": run_regdb, "llcm": run_llcm}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not 1 <= args.trials <= 10:
            raise UsageError(f"--trials must be between 1 and 10, got {args.trials}")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
        if args.ranks_queries < 1:
            raise UsageError(f"--ranks-queries must be positive, got {args.ranks_queries}")
        if args.v2i_sampled_infrared_queries and args.dataset != "llcm":
            raise UsageError("--v2i-sampled-infrared-queries applies to --dataset llcm only")
        manifest = check_prepared(args.data_dir, args.dataset, args.height, args.width)
        device = resolve_device(args.device)
        files = checkpoint_files(args)
        check_checkpoints(args, files, manifest)
        print(f"prepared {args.dataset} data {args.data_dir} at {manifest['height']}x{manifest['width']}, "
              f"device {device}")
        metrics = RUNS[args.dataset](args, device)
        if args.json:
            hashes = {str(t): sha256_file(p) for t, p in files.items()}
            metrics["checkpoint"] = {"path": args.checkpoint,
                                     "sha256": hashes.popitem()[1] if len(hashes) == 1 else hashes}
            write_json(args.json, metrics)
    except (CheckpointError, PreparedDataError, UsageError) as exc:
        print(f"test.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"test.py: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C (temporary files removed)
    sys.exit(main())
