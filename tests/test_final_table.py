"""A run's final test table: the best-on-test model beside the last epoch's, one row per setting and metric."""

from rpnr.data.published import METRICS
from rpnr.engine.protocol import side_by_side


def _run(best_epoch, last_epoch, base):
    def metrics(offset):
        return {m: base + offset + i for i, m in enumerate(METRICS)}

    return {"best": {"epoch": best_epoch, "checkpoint": {"path": "b", "sha256": "0"},
                     "visible_to_thermal": metrics(10), "thermal_to_visible": metrics(20)},
            "last": {"epoch": last_epoch, "checkpoint": {"path": "c", "sha256": "1"},
                     "visible_to_thermal": metrics(0), "thermal_to_visible": metrics(5)}}


def test_side_by_side_table():
    lines = side_by_side(_run(3, 50, 10.0), "final test")
    assert lines[0] == "final test"
    assert lines[1].split() == ["best", "(epoch", "3)", "last", "(epoch", "50)"]
    assert len(lines) == 2 + 12 + 1  # header, 2 settings x 6 metrics, the explanation
    row = next(line for line in lines if line.startswith("thermal_to_visible") and "mAP" in line)
    assert row.split() == ["thermal_to_visible", "mAP", "34.00", "19.00"]  # best column, then last
    assert lines[2].split() == ["visible_to_thermal", "Rank-1", "20.00", "10.00"]
