"""benchmarks/ab.py: two settings of one bench case, interleaved in one process."""
import json

import pytest

from benchmarks import ab


def test_b_speed_over_a_is_the_median_of_the_rounds_and_the_sides_alternate():
    calls, times_a, times_b = [], iter([0.020, 0.030, 0.020]), iter([0.010, 0.010, 0.040])

    def run_a(steps):
        calls.append(("A", steps))
        return next(times_a)

    def run_b(steps):
        calls.append(("B", steps))
        return next(times_b)

    row = ab.side_by_side(run_a, run_b, rounds=3, steps_a=4, steps_b=7)
    assert calls == [("A", 4), ("B", 7), ("B", 7), ("A", 4), ("A", 4), ("B", 7)]
    # per round A/B: 2.0, 3.0, 0.5 -> B is twice as fast in the middle round of the three
    assert row["ratio_median"] == pytest.approx(2.0)
    assert (row["ratio_min"], row["ratio_max"]) == (pytest.approx(0.5), pytest.approx(3.0))
    assert row["a_ms"] == pytest.approx(20.0) and row["b_ms"] == pytest.approx(10.0)
    assert row["ratio_of_best"] == pytest.approx(2.0)     # A's best 20 ms over B's best 10 ms
    assert row["a_ms_rounds"] == pytest.approx([20.0, 30.0, 20.0])
    assert row["b_ms_rounds"] == pytest.approx([10.0, 10.0, 40.0])


def test_a_real_case_both_sides_compiled_and_written(tmp_path, capsys):
    out = tmp_path / "ab.json"
    row = ab.main(["autoencoder", "16", "--b", "optim.accum_steps=2", "--rounds", "3", "--json", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("A: the case as benched (compiled in ")
    assert printed[1].startswith("B: optim.accum_steps=2 (") and "2 micro-batches" in printed[1]
    assert printed[2].startswith("autoencoder b16: A ") and "3 rounds" in printed[2]
    assert json.loads(out.read_text()) == row
    assert row["a"] == [] and row["b"] == ["optim.accum_steps=2"] and row["rounds"] == 3
    assert row["a_ms"] > 0 and row["b_ms"] > 0 and row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]


def test_a_bad_key_on_either_side_fails_in_one_line_before_anything_compiles(monkeypatch):
    from flaxgen import bench

    monkeypatch.setattr(bench, "time_case", lambda *a, **k: pytest.fail("compiled before checking"))
    with pytest.raises(SystemExit, match=r"side B \(optim.lrr=0.1\): .*optim.lrr.*"):
        ab.main(["vae", "16", "--a", "optim.lr=0.1", "--b", "optim.lrr=0.1"])
    with pytest.raises(SystemExit, match=r"side A \(data.batch_size=8\): --a cannot set data.batch_size: both sides run the BATCH"):
        ab.main(["vae", "16", "--a", "data.batch_size=8"])
