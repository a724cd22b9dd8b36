"""Is one setting of a bench case faster than another, measured side by side?

Separate `flaxgen bench --set ...` runs land minutes apart, and on a shared machine the minutes
differ by more than most changes gain. This builds one bench case twice, with two lists of
config overrides (A and B: `--set`'s syntax; none means the case as the bench runs it), compiles
both in one process and interleaves their repeats as the bench interleaves a peer's (A B, B A,
...), then reports B's speed over A's: the median of the per-round ratios with their quartiles.
Giving both sides the same settings (an A/A run) measures the noise of the minute.

    python -m benchmarks.ab conv_vae 128 --b optim.cpu_micro_batch=16 [--rounds 21]
    python -m benchmarks.ab dcgan 64 --a train.xla_cpu_options=[] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


# what `--set` may not change here, and why
SET_ELSEWHERE = {"data.batch_size": "both sides run the BATCH argument",
                 "parallel.strategy": "both sides run --strategy",
                 "parallel.num_devices": "both sides run --devices",
                 "model.dtype": "the case fixes it; compare dtypes with `flaxgen bench --dtype` runs"}


def label(overrides: Sequence[str]) -> str:
    return " ".join(overrides) or "the case as benched"


def side_by_side(run_a, run_b, rounds: int, steps_a: int, steps_b: int) -> dict:
    """Interleaved repeats of two steps; the medians (ms a step) and B's speed over A's."""
    from flaxgen import bench

    times_a, times_b = bench.timed_in_turn(run_a, steps_a, run_b, steps_b, rounds)
    return {**bench.step_ms("a", times_a), **bench.step_ms("b", times_b),
            **bench.ratio_stats(times_b, times_a), "rounds": rounds}


def main(argv: list[str] | None = None) -> dict:
    from flaxgen import bench, hostmem
    from flaxgen.config import ConfigError
    from flaxgen.training.loop import checked_plan

    parser = argparse.ArgumentParser("benchmarks.ab", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(bench.MODELS))
    parser.add_argument("batch", type=int)
    parser.add_argument("--a", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of side A (repeatable; none: the case as benched)")
    parser.add_argument("--b", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of side B (repeatable)")
    parser.add_argument("--strategy", default="single", choices=["single", "mesh", "pmap"])
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    hostmem.keep_freed_memory()     # as the flaxgen command runs
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    sides = {"A": args.a, "B": args.b}
    try:    # both sides checked before either compiles
        for name, overrides in sides.items():
            for key in (item.partition("=")[0] for item in overrides):
                if key in SET_ELSEWHERE:
                    raise ConfigError(f"--{name.lower()} cannot set {key}: {SET_ELSEWHERE[key]}")
            checked_plan(bench.case_config(args.model, args.batch, args.strategy, args.devices, None, overrides))
    except ConfigError as error:
        raise SystemExit(f"error: side {name} ({label(overrides)}): {error}") from None

    runs = {}
    for name, overrides in sides.items():
        result, runs[name] = bench.time_case(args.model, args.batch, args.strategy, args.devices,
                                             repeats=1, overrides=overrides)
        print(f"{name}: {label(overrides)} (compiled in {result.compile_s:.1f} s, "
              f"{result.micro_batches} micro-batch{'es' if result.micro_batches > 1 else ''})", flush=True)
    steps = {name: bench._steps_lasting(run) for name, run in runs.items()}
    row = side_by_side(runs["A"], runs["B"], args.rounds, steps["A"], steps["B"])
    row.update(model=args.model, batch=args.batch, strategy=args.strategy, a=args.a, b=args.b)
    same = " (A/A: the same settings on both sides, so this is the noise)" if args.a == args.b else ""
    print(f"{args.model} b{args.batch}: A {row['a_ms']:.2f} ms/step, B {row['b_ms']:.2f} ms/step; "
          f"B's speed over A's {row['ratio_median']:.3f}x (IQR {row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}, "
          f"range {row['ratio_min']:.3f}-{row['ratio_max']:.3f}, {args.rounds} rounds; "
          f"best rounds {row['ratio_of_best']:.3f}x){same}", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(row, file, indent=1)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
