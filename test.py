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

from rpnr.common.command import Parser, require_positive, run_command, script
from rpnr.common.errors import CheckpointError, UsageError
from rpnr.common.files import check_outputs, sha256_file, write_json
from rpnr.data.prepared import check_prepared
from rpnr.data.registry import Dataset, all_datasets, get_dataset
from rpnr.engine.protocol import evaluate, format_result, mean_results, to_percent, trial_checkpoint
from rpnr.engine.rank_lists import write_rank_list
from rpnr.engine.settings import resolve_device
from rpnr.models import Trained, load_trained


def parse_args(argv=None) -> argparse.Namespace:
    datasets = all_datasets()
    modes = sorted({mode for ds in datasets.values() for mode in ds.modes})
    parser = Parser(prog="test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        raise UsageError(f"--mode applies to {', '.join(d.display for d in all_datasets().values() if d.modes)}, not "
                         f"{ds.display}")
    if args.mode and args.mode not in ds.modes:
        raise UsageError(f"--mode {args.mode} is not a {ds.display} setting (choose from {', '.join(ds.modes)})")
    settings = [ds.setting(args.mode or ds.modes[0])] if ds.modes else list(ds.settings)
    for flag, variant in {f: v for d in all_datasets().values() for f, v in d.variants.items()}.items():
        if getattr(args, flag):
            if flag not in ds.variants:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --dataset "
                                 f"{', '.join(d.name for d in all_datasets().values() if flag in d.variants)} only")
            settings = [variant if s.name == variant.name else s for s in settings]
    return settings


def check_outputs_of(args) -> None:
    """The output rule (DESIGN.md section 14) for --json and --ranks-png, before anything is tested."""
    outputs = [(f"--{flag.replace('_', '-')} {path}", path) for flag, path in (("json", args.json),
                                                                              ("ranks_png", args.ranks_png)) if path]
    check_outputs(outputs, inputs=[(f"--data-dir {args.data_dir}", args.data_dir), *(
        (f"--checkpoint {args.checkpoint}", trial_checkpoint(args.checkpoint, t)) for t in range(1, 11))])


def load_models(args, ds: Dataset, files: dict[int, str], manifest: dict) -> dict[int, Trained]:
    """The model of each tested trial (DESIGN.md section 14): a checkpoint of another dataset, or of trial t tested
    on other trials (they test on identities it trained on), is refused; another training size is a warning."""
    models = {}
    for trial, path in files.items():
        try:
            models[trial] = load_trained(path, "cpu", args.dataset, trial if ds.model_per_trial else None,
                                         display=ds.display)
        except CheckpointError as exc:
            hint = "; put {trial} in --checkpoint to test each trial with its own model" if "{trial}" not in \
                args.checkpoint and "training identities" in str(exc) else ""
            hint += f" (trial {trial})" if ds.model_per_trial and not os.path.isfile(path) else ""
            raise CheckpointError(f"{exc}{hint}") from None
        models[trial].check_size(args.data_dir, (manifest["height"], manifest["width"]))
        for line in models[trial].notes:
            print(line)
    return models


def run_test(args, ds: Dataset, settings: list, models: dict[int, Trained], device: str) -> dict:
    """Test every setting over the trials, print each trial and the means; the mean metrics in percent (one
    setting: its metrics, else ``{setting: metrics}``)."""
    trials = ds.trials[:args.trials]
    if ds.model_per_trial:  # each trial with its own model
        per_trial = {s.name: [] for s in settings}
        for trial in trials:
            print(f"{ds.display} trial {trial}, checkpoint {models[trial].path}")
            result = evaluate(models[trial].model, args.dataset, args.data_dir, settings, [trial], device,
                              args.batch_size, progress=True)
            for s in settings:
                per_trial[s.name] += result[s.name]["per_trial"]
        results = {name: mean_results(values) for name, values in per_trial.items()}
    else:
        print(f"{ds.display}, trials {trials[0]}-{trials[-1]}, checkpoint {models[0].path}")
        results = evaluate(models[0].model, args.dataset, args.data_dir, settings, trials, device, args.batch_size,
                           progress=True)
    for k, trial in enumerate(trials):
        for s in settings:
            print(format_result(results[s.name]["per_trial"][k], f"Trial {trial} {s.label}:"))
    for s in settings:
        print(format_result(results[s.name], f"Mean of {len(trials)} trials {s.label}:"))
    if args.ranks_png:
        write_rank_list(models[min(models)].model, args.dataset, args.data_dir, args.ranks_png, trial=trials[0],
                        num_queries=args.ranks_queries, device=device, batch_size=args.batch_size)
        print(f"wrote rank list {args.ranks_png}")
    if ds.modes:
        return to_percent(results[settings[0].name])
    return {s.name: to_percent(results[s.name]) for s in settings}


def evaluate_checkpoint(argv) -> None:
    args = parse_args(argv)
    ds = get_dataset(args.dataset)
    if not 1 <= args.trials <= len(ds.trials):
        raise UsageError(f"--trials must be between 1 and {len(ds.trials)}, got {args.trials}")
    require_positive(("--batch-size", args.batch_size), ("--ranks-queries", args.ranks_queries))
    settings = chosen_settings(args, ds)
    check_outputs_of(args)
    manifest = check_prepared(args.data_dir, args.dataset, args.height, args.width)
    device = resolve_device(args.device)
    # the checkpoint of each tested trial ({trial} replaced) for datasets with one model per trial, else {0: path}
    files = ({t: trial_checkpoint(args.checkpoint, t) for t in ds.trials[:args.trials]} if ds.model_per_trial
             else {0: args.checkpoint})
    models = load_models(args, ds, files, manifest)
    print(f"prepared {args.dataset} data {args.data_dir} at {manifest['height']}x{manifest['width']}, device {device}")
    metrics = run_test(args, ds, settings, models, device)
    if args.json:
        hashes = {str(t): sha256_file(p) for t, p in files.items()}
        metrics["checkpoint"] = {"path": args.checkpoint, "sha256": hashes.popitem()[1] if len(hashes) == 1 else hashes}
        write_json(args.json, metrics)


def main(argv=None) -> int:
    return run_command(lambda: evaluate_checkpoint(argv), "test.py")


if __name__ == "__main__":
    script(main)
