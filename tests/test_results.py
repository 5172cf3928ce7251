"""Best-on-test beside last-epoch results: means over RegDB trials, the side-by-side table, the CLI."""

import json

import pytest

from rpnr.results import main, mean_results, side_by_side

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def _run(best_epoch, last_epoch, base):
    def metrics(offset):
        return {m: base + offset + i for i, m in enumerate(METRICS)}

    return {"best": {"epoch": best_epoch, "visible_to_thermal": metrics(10), "thermal_to_visible": metrics(20)},
            "last": {"epoch": last_epoch, "visible_to_thermal": metrics(0), "thermal_to_visible": metrics(5)}}


def test_mean_over_trials_per_column_and_setting():
    mean = mean_results([_run(3, 50, 10.0), _run(7, 50, 20.0)])
    assert mean["best"]["epoch"] == [3, 7] and mean["last"]["epoch"] == [50, 50]
    assert mean["best"]["visible_to_thermal"]["rank1"] == pytest.approx(25.0)  # (20 + 30) / 2
    assert mean["best"]["thermal_to_visible"]["mINP"] == pytest.approx(40.0)  # (35 + 45) / 2
    assert mean["last"]["visible_to_thermal"]["mAP"] == pytest.approx(19.0)  # (14 + 24) / 2
    with pytest.raises(ValueError):
        mean_results([])


def test_side_by_side_table():
    lines = side_by_side(_run(3, 50, 10.0), "final test")
    assert lines[0] == "final test"
    assert "best (epoch 3)" in lines[1] and "last (epoch 50)" in lines[1]
    assert len(lines) == 2 + 12 + 1  # header, 2 settings x 6 metrics, the explanation
    row = next(line for line in lines if line.startswith("thermal_to_visible") and "mAP" in line)
    assert row.split()[-2:] == ["34.00", "19.00"]  # best column, then last
    mean = side_by_side(mean_results([_run(3, 50, 10.0), _run(7, 50, 20.0)]), "mean")
    assert "best (epochs 3,7)" in mean[1]


def test_command_line_mean_and_json(tmp_path, capsys):
    paths = []
    for trial, base in ((1, 10.0), (2, 20.0)):
        path = tmp_path / f"{trial}.json"
        path.write_text(json.dumps(_run(trial, 50, base)))
        paths.append(str(path))
    out = tmp_path / "summary.json"
    assert main([*paths, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "final test, mean of 2 runs" in printed and "last (epochs 50,50)" in printed
    assert json.loads(out.read_text())["best"]["visible_to_thermal"]["rank1"] == pytest.approx(25.0)
    (tmp_path / "old.json").write_text(json.dumps({"epoch": 3, "all": {}}))  # an old single-model test.json
    assert main([str(tmp_path / "old.json")]) == 1
    assert "not a test.json with 'best' and 'last'" in capsys.readouterr().err
