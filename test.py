"""Ten-trial test of a trained model on a prepared dataset (any registered one: ``--dataset``).

    python test.py --dataset sysu --data-dir data/sysu_288x144 --checkpoint logs/sysu_s2/model_best.pth.tar --mode all
    python test.py --dataset regdb --data-dir data/regdb_288x144 --checkpoint 'logs/regdb_s2/{trial}/model_best.pth.tar'
    python test.py --dataset llcm --data-dir data/llcm_288x144 --checkpoint logs/llcm_s2/model_best.pth.tar

Every test setting of the dataset (SYSU-MM01: the one ``--mode``) over its first ``--trials`` trials, each test
image embedded once, the mean reported. Datasets with one model per trial (RegDB) test trial t with the
checkpoint whose path has ``{trial}`` replaced by t. Official release checkpoints load as they are.
``--ranks-png PATH`` also draws a rank list (top-10 gallery images of a few queries on the first trial).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

from rpnr.checkpoint import CheckpointError, missing_checkpoint_line, trained_on
from rpnr.config import UsageError
from rpnr.data.prepared import PreparedDataError, check_prepared
from rpnr.datasets import Dataset, get_dataset, registry
from rpnr.distributed import DistributedError, resolve_device
from rpnr.files import error_line, sha256_file, write_json
from rpnr.models import build_model, load_weights
from rpnr.protocols import evaluate, format_result, mean_results, to_percent, trial_checkpoint
from rpnr.rank_list import write_rank_list
from rpnr.run_folder import CHECKPOINT, OUTPUTS, RUN_JSON


def parse_args(argv=None) -> argparse.Namespace:
    datasets = registry()
    modes = sorted({mode for ds in datasets.values() for mode in ds.modes})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(datasets), required=True)
    parser.add_argument("--data-dir", required=True, help="prepared folder (prepare_<dataset>.py)")
    parser.add_argument("--checkpoint", required=True,
                        help="model checkpoint (ours or the official release's); may contain {trial}")
    parser.add_argument("--mode", choices=modes, default=None,
                        help="the setting to test, for datasets tested one setting at a time (" + "; ".join(
                            f"{ds.display}: {', '.join(ds.modes)}" for ds in datasets.values() if ds.modes) +
                        "; default the first)")
    parser.add_argument("--trials", type=int, default=10, help="number of trials (the dataset's first ones)")
    for flag, owner in {flag: ds for ds in datasets.values() for flag in ds.variants}.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", action="store_true",
                            help=f"{owner.display} only: {owner.variants[flag].about}")
    parser.add_argument("--height", type=int, default=None, help="expected prepared height (checked)")
    parser.add_argument("--width", type=int, default=None, help="expected prepared width (checked)")
    parser.add_argument("--json", default=None, help="write the mean metrics (percent) to this file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ranks-png", default=None, metavar="PATH",
                        help="also draw a rank list PNG: one row per query, its top-10 gallery images of the first "
                             "trial framed green (same identity) or red, on the setting tested every epoch in "
                             "training (e.g. SYSU-MM01 all-search, RegDB visible to thermal)")
    parser.add_argument("--ranks-queries", type=int, default=8, metavar="N",
                        help="queries in the rank list, spread over identities (default 8)")
    return parser.parse_args(argv)


def chosen_settings(args, ds: Dataset) -> list:
    """The settings to test: the dataset's (or the ``--mode`` one), with the variants asked for."""
    if args.mode and not ds.modes:
        raise UsageError(f"--mode applies to {', '.join(d.display for d in registry().values() if d.modes)}, not "
                         f"{ds.display}")
    if args.mode and args.mode not in ds.modes:
        raise UsageError(f"--mode {args.mode} is not a {ds.display} setting (choose from {', '.join(ds.modes)})")
    settings = [ds.setting(args.mode or ds.modes[0])] if ds.modes else list(ds.settings)
    for flag, variant in {f: v for d in registry().values() for f, v in d.variants.items()}.items():
        if getattr(args, flag):
            if flag not in ds.variants:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --dataset "
                                 f"{', '.join(d.name for d in registry().values() if flag in d.variants)} only")
            settings = [variant if s.name == variant.name else s for s in settings]
    return settings


def check_outputs(args) -> None:
    """Refuse, before anything is tested, an output path (--json, --ranks-png) that is a training run's own output
    (a file named like one in a folder holding run.json or checkpoint.pth.tar), a folder, or not writable, and
    the two outputs in one file; each named as given (DESIGN.md section 10)."""
    given = {flag: path for flag, path in (("--json", args.json), ("--ranks-png", args.ranks_png)) if path is not None}
    if len(given) == 2 and os.path.realpath(args.json) == os.path.realpath(args.ranks_png):
        raise UsageError(f"--json {args.json} and --ranks-png {args.ranks_png} are the same file; give each its own")
    for flag, path in given.items():
        target = Path(path)
        if target.is_dir():
            raise UsageError(f"{flag} {path} is a folder; give a file name")
        if target.name in OUTPUTS and any((target.parent / name).is_file() for name in (RUN_JSON, CHECKPOINT)):
            raise UsageError(f"{flag} {path} is the training run's own {target.name}; write elsewhere")
        folder = next(p for p in target.parents if p.exists())  # the missing folders are created
        if not folder.is_dir():
            raise UsageError(f"cannot write {flag} {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write {flag} {path}: no permission to write in {folder} (or it is read-only)")


def check_checkpoints(args, ds: Dataset, files: dict[int, str], manifest: dict) -> None:
    """Refuse a checkpoint trained on another dataset, and a model of trial t tested on other trials (they
    test on identities it trained on); warn about another training image size (DESIGN.md section 10)."""
    unrecorded = []
    for trial, path in files.items():
        if not os.path.isfile(path):
            raise CheckpointError(missing_checkpoint_line(path) + (f" (trial {trial})" if ds.model_per_trial else ""))
        try:
            saved = trained_on(path, args.dataset, trial if ds.model_per_trial else None, ds.display)
        except CheckpointError as exc:
            hint = "; put {trial} in --checkpoint to test each trial with its own model" if "{trial}" not in \
                args.checkpoint and "training identities" in str(exc) else ""
            raise UsageError(f"{exc}{hint}") from None
        if saved is None:
            unrecorded.append(path)
            continue
        size = (saved.get("height"), saved.get("width"))
        if None not in size and size != (manifest["height"], manifest["width"]):
            print(f"warning: {path} was trained at {size[0]}x{size[1]} but {args.data_dir} holds "
                  f"{manifest['height']}x{manifest['width']} images")
    if unrecorded:
        print(f"note: {unrecorded[0]} records no dataset, trial or image size (an official release checkpoint?); "
              f"tested as given")


def load_model(path: str, device: torch.device) -> torch.nn.Module:
    model = build_model("agw")
    load_weights(model, path)
    return model.to(device).eval()


def run_test(args, ds: Dataset, settings: list, files: dict[int, str], device: torch.device) -> dict:
    """Test every setting over the trials, print each trial and the means; the mean metrics in percent (one
    setting: its metrics, else ``{setting: metrics}``)."""
    trials = ds.trials[:args.trials]
    if ds.model_per_trial:  # each trial with its own model
        per_trial = {s.name: [] for s in settings}
        for trial in trials:
            print(f"{ds.display} trial {trial}, checkpoint {files[trial]}")
            result = evaluate(load_model(files[trial], device), args.dataset, args.data_dir, settings, [trial],
                              device, args.batch_size, progress=True)
            for s in settings:
                per_trial[s.name] += result[s.name]["per_trial"]
        results = {name: mean_results(values) for name, values in per_trial.items()}
    else:
        print(f"{ds.display}, trials {trials[0]}-{trials[-1]}, checkpoint {files[0]}")
        results = evaluate(load_model(files[0], device), args.dataset, args.data_dir, settings, trials, device,
                           args.batch_size, progress=True)
    for k, trial in enumerate(trials):
        for s in settings:
            print(format_result(results[s.name]["per_trial"][k], f"Trial {trial} {s.label}:"))
    for s in settings:
        print(format_result(results[s.name], f"Mean of {len(trials)} trials {s.label}:"))
    if args.ranks_png:
        write_rank_list(load_model(files[min(files)], device), args.dataset, args.data_dir, args.ranks_png,
                        trial=trials[0], num_queries=args.ranks_queries, device=device, batch_size=args.batch_size)
        print(f"wrote rank list {args.ranks_png}")
    if ds.modes:
        return to_percent(results[settings[0].name])
    return {s.name: to_percent(results[s.name]) for s in settings}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ds = get_dataset(args.dataset)
        if not 1 <= args.trials <= len(ds.trials):
            raise UsageError(f"--trials must be between 1 and {len(ds.trials)}, got {args.trials}")
        for flag, value in (("--batch-size", args.batch_size), ("--ranks-queries", args.ranks_queries)):
            if value < 1:
                raise UsageError(f"{flag} must be positive, got {value}")
        settings = chosen_settings(args, ds)
        check_outputs(args)
        manifest = check_prepared(args.data_dir, args.dataset, args.height, args.width)
        device = torch.device(resolve_device(args.device))
        # the checkpoint of each tested trial ({trial} replaced) for datasets with one model per trial, else {0: path}
        files = ({t: trial_checkpoint(args.checkpoint, t) for t in ds.trials[:args.trials]} if ds.model_per_trial
                 else {0: args.checkpoint})
        check_checkpoints(args, ds, files, manifest)
        print(f"prepared {args.dataset} data {args.data_dir} at {manifest['height']}x{manifest['width']}, "
              f"device {device}")
        metrics = run_test(args, ds, settings, files, device)
        if args.json:
            hashes = {str(t): sha256_file(p) for t, p in files.items()}
            metrics["checkpoint"] = {"path": args.checkpoint,
                                     "sha256": hashes.popitem()[1] if len(hashes) == 1 else hashes}
            write_json(args.json, metrics)
    except (CheckpointError, PreparedDataError, UsageError, DistributedError, OSError) as exc:
        print(f"test.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C (temporary files removed)
    sys.exit(main())
