"""train.py --dataset llcm takes SYSU-MM01's settings by default (DESIGN.md section 9); the LLCM training run
itself is tests/test_scripts.py::test_llcm_script_runs_the_sysu_script_with_llcm."""

from __future__ import annotations

from rpnr.engine.settings import build_config, build_parser


def test_llcm_defaults_are_sysu_settings(tiny_llcm):
    def config(*argv):
        return build_config(vars(build_parser().parse_args(["--dataset", "llcm", "--data-dir", str(tiny_llcm),
                                                             "--no-imagenet", "--device", "cpu", *argv])))

    s1, s2 = config("--stage", "baseline"), config("--stage", "rpnr", "--resume")
    assert (s1.eps, s1.iters, s1.batch_size, s1.rgb_batch_size, s1.top_k) == (0.6, 200, 128, 64, 20)
    assert (s2.rgb_batch_size, s2.logs_dir, s2.baseline) == (128, "logs/llcm_s2", "baseline/llcm_s1/model_best.pth.tar")
    assert s1.logs_dir == "baseline/llcm_s1"  # one model for every trial, as SYSU-MM01
