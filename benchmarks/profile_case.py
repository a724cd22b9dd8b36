"""Where one `flaxgen bench` case's training step spends its time.

Builds and warms the case as the bench does, runs a few steps under jax.profiler, and prints the
device's busiest operations (GPU kernels on an accelerator, XLA ops on CPU) with their share of
the wall-clock step. Busy time well under the step time means the step waits on the host
(launches, dispatch), not on arithmetic or memory.

    python -m benchmarks.profile_case gpt2_small 16 [--steps 5] [--set model.attention=xla] [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
from pathlib import Path

import jax


def busy_by_name(trace: dict) -> tuple[str, dict[str, tuple[float, int]]]:
    """(where, {op name: (total µs, count)}) for the trace's device process (/device:...): its
    GPU streams' kernels where it has streams (not the module and op lines, which nest over
    them), else all its lines. Without a device process (CPU), the whole trace, nested."""
    events = trace["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices = [pid for pid, name in processes.items() if name.startswith("/device:")]
    if devices:
        lines = {key for key in threads if key[0] in devices}
        streams = {key for key in lines if threads[key].startswith("Stream")}
        chosen = streams or lines
        label = ", ".join(sorted(f"{processes[pid]} {threads[(pid, tid)]}" for pid, tid in chosen))
    else:
        chosen, label = None, "the whole trace (nested events counted each)"
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in events:
        if event.get("ph") == "X" and "dur" in event and (
                chosen is None or (event.get("pid"), event.get("tid")) in chosen):
            entry = totals[event["name"]]
            entry[0] += float(event["dur"])
            entry[1] += 1
    return label, {name: (total, count) for name, (total, count) in totals.items()}


def main(argv: list[str] | None = None) -> None:
    from flaxgen import bench, hostmem

    parser = argparse.ArgumentParser("profile_case", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(bench.MODELS))
    parser.add_argument("batch", type=int)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    hostmem.keep_freed_memory()     # as the flaxgen command runs

    dtype = bench.run_dtype(args.dtype, jax.default_backend())
    result, run = bench.time_case(args.model, args.batch, dtype=dtype, repeats=1, steps=args.steps,
                                  overrides=args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            step_s = run(args.steps)
        path = next(Path(folder).rglob("perfetto_trace.json.gz"))
        trace = json.loads(gzip.decompress(path.read_bytes()))
    label, totals = busy_by_name(trace)
    step_us = step_s * 1e6
    busy_us = sum(total for total, _ in totals.values()) / args.steps
    print(f"{args.model} batch {args.batch} {dtype} {' '.join(args.overrides)}: {step_us / 1e3:.2f} ms/step "
          f"under the profiler ({result.step_ms_median:.2f} without); {label} busy {busy_us / 1e3:.2f} ms/step "
          f"({100 * busy_us / step_us:.0f}%) in {sum(c for _, c in totals.values()) // args.steps} ops")
    if jax.default_backend() == "cpu":
        print("XLA:CPU traces an Eigen dot's launch, not its work (here the dots contracting dimension 0: "
              "benchmarks/README.md, item 21), so those read low here; time such a dot alone")
    print(f"{'us/step':>10}{'% step':>8}{'calls':>7}  op")
    for name, (total, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:args.top]:
        per_step = total / args.steps
        print(f"{per_step:>10.1f}{100 * per_step / step_us:>7.1f}%{count // args.steps:>7}  {name[:110]}")


if __name__ == "__main__":
    main()
