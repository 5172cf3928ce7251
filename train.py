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

import dataclasses
import os
import sys

from rpnr.common.command import run_command, script
from rpnr.common.files import CHECKPOINT, os_error_line
from rpnr.engine import distributed
from rpnr.engine.loop import check_line, check_run, run
from rpnr.engine.settings import build_config, build_parser, named_settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    world, rank = distributed.launched_processes()[:2]
    state = {"group": distributed.SINGLE, "cfg": None}

    def train() -> None:
        given = named_settings(argv)
        cfg = state["cfg"] = build_config(vars(args), world)
        group, device = distributed.start(cfg.device)
        state["group"], cfg = group, dataclasses.replace(cfg, device=device)
        if cfg.check:  # every check, nothing written; the scripts run it with torchrun's WORLD_SIZE, unlaunched
            line = check_line(check_run(cfg, group if group.joined else distributed.ProcessGroup(world_size=world),
                                        given))
            if rank == 0:
                print(line)
        else:
            run(cfg, group, given, ["train.py", *argv])

    def stop_line(exc: BaseException) -> str | None:
        kept = state["cfg"] is not None and os.path.isfile(os.path.join(state["cfg"].logs_dir, CHECKPOINT))
        if isinstance(exc, KeyboardInterrupt):
            return "interrupted; " + ("continue with --resume" if kept else "no checkpoint was written yet (start "
                                      "again with --overwrite)")
        return f"error: {os_error_line(exc)} (the last checkpoint is intact)" if isinstance(exc, OSError) and kept \
            else None

    try:
        return run_command(train, stop_line=stop_line)
    finally:
        distributed.stop(state["group"])


if __name__ == "__main__":
    script(main)
