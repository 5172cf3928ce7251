#!/usr/bin/env python
"""Train RPNR: stage 1 (``--stage baseline``) or stage 2 (``--stage rpnr``) on a prepared dataset.

Every hyperparameter defaults to the official value for the dataset and stage
(DESIGN.md sections 3-5; ``python train.py --help`` lists them). Examples:

    python train.py --dataset sysu --stage baseline --data-dir data/sysu_288x144 --imagenet resnet50.pth
    python train.py --dataset sysu --stage rpnr --data-dir data/sysu_288x144
    python train.py --dataset regdb --trial 3 --stage baseline --data-dir data/regdb_288x144 --imagenet r50.pth
    python train.py ... --resume        # continue the run in --logs-dir from its checkpoint
    python train.py ... --check         # check settings, data, start weights and logs folder; write nothing
    torchrun --nproc_per_node 4 train.py --dataset sysu --stage rpnr ...   # one process per GPU
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

from rpnr import distributed
from rpnr.checkpoint import CheckpointError
from rpnr.config import TrainingError, UsageError, build_config, build_parser, named_settings
from rpnr.data.prepared import PreparedDataError
from rpnr.distributed import DistributedError
from rpnr.files import os_error_line
from rpnr.run_folder import CHECKPOINT, RunFolderError
from rpnr.trainer import check_line, check_run, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    world, rank = distributed.launched_processes()[:2]
    group, cfg = distributed.SINGLE, None
    try:
        cfg = build_config(vars(args), world)
        group, device = distributed.start(cfg.device)
        cfg = dataclasses.replace(cfg, device=device)
        if cfg.check:  # every check, nothing written; the scripts run it with torchrun's WORLD_SIZE, unlaunched
            alone = group if group.joined else distributed.ProcessGroup(world_size=world)
            line = check_line(check_run(cfg, alone, named_settings(argv)))
            if rank == 0:
                print(line)
        else:
            run(cfg, group, named_settings(argv), ["train.py", *argv])
    except (UsageError, TrainingError, PreparedDataError, CheckpointError, DistributedError, RunFolderError) as exc:
        if rank == 0:  # every rank meets the same error; one line is enough
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, KeyboardInterrupt) as exc:
        kept = cfg is not None and os.path.isfile(os.path.join(cfg.logs_dir, CHECKPOINT))
        if rank == 0 and isinstance(exc, OSError):
            print(f"error: {os_error_line(exc)}" + (" (the last checkpoint is intact)" if kept else ""),
                  file=sys.stderr)
        elif rank == 0:
            print("interrupted; " + ("continue with --resume" if kept else "no checkpoint was written yet (start "
                                     "again with --overwrite)"), file=sys.stderr)
        return 1 if isinstance(exc, OSError) else 130
    finally:
        distributed.stop(group)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM (kill, torchrun) ends like Ctrl-C
    sys.exit(main())
