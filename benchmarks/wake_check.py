"""Does a peer's repeat slow the repeat of ours that follows it?

`flaxgen bench --peers` alternates our repeats with a peer's and reads the ratio per pair. That is
fair only if neither side leaves the machine worse for the other: threads still spinning after
their work (OpenMP, TensorFlow's pools), caches evicted, clocks lowered. This times our step in
three wakes, in alternating blocks within the same minutes: right after a repeat of our own,
right after the peer's, and right after an idle pause as long as the peer's repeat. For a peer
in a worker process it also reads how much CPU that process burns in the half second after its
repeat has returned.

    python -m benchmarks.wake_check conv_vae 128 [--peer tensorflow] [--blocks 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

WAKES = ("after ours", "after the peer", "after idle")


def wake_times(run_ours, steps_ours, run_peer, steps_peer, blocks: int, per_block: int = 3,
               pause=time.sleep) -> dict[str, list[float]]:
    """Seconds per step of our repeats in each wake (and the peer's own repeats under "peer"):
    `blocks` rounds of `per_block` repeats in each wake, so that drift falls on all three alike."""
    times: dict[str, list[float]] = {wake: [] for wake in (*WAKES, "peer")}
    for _ in range(blocks):
        for _ in range(per_block):
            run_ours(steps_ours)
            times["after ours"].append(run_ours(steps_ours))
        for _ in range(per_block):
            times["peer"].append(run_peer(steps_peer))
            times["after the peer"].append(run_ours(steps_ours))
        for _ in range(per_block):
            pause(times["peer"][-1] * steps_peer)
            times["after idle"].append(run_ours(steps_ours))
    return times


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_burnt_after(run_peer, steps: int, pid: int, repeats: int = 3, seconds: float = 0.5) -> float:
    """The most CPU seconds the peer's process used in the `seconds` after one of its repeats
    returned, over `repeats` repeats (at the clock tick's resolution, 10 ms on Linux)."""
    burnt = []
    for _ in range(repeats):
        run_peer(steps)
        before = _cpu_seconds(pid)
        time.sleep(seconds)
        burnt.append(_cpu_seconds(pid) - before)
    return max(burnt)


def main(argv: list[str] | None = None) -> None:
    from flaxgen import bench, hostmem

    parser = argparse.ArgumentParser("wake_check", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(bench.MODELS))
    parser.add_argument("batch", type=int)
    parser.add_argument("--peer", default="", help="only the peers whose name contains this")
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args(argv)
    hostmem.keep_freed_memory()     # as the flaxgen command runs

    micro = bench.micro_batches(args.model, args.batch, "single", None)
    _, ours = bench.time_case(args.model, args.batch, repeats=1)
    steps_ours = bench._steps_lasting(ours)
    for name, peer in bench._peers_for(args.model, args.batch, "float32", micro):
        if args.peer in name:
            steps_peer = bench._steps_lasting(peer)
            times = wake_times(ours, steps_ours, peer, steps_peer, args.blocks)
            medians = {wake: statistics.median(values) * 1e3 for wake, values in times.items()}
            pid = getattr(peer, "pid", None)
            burnt = (f"; its process burnt at most {cpu_burnt_after(peer, steps_peer, pid) * 1e3:.0f} ms "
                     f"of CPU in the 0.5 s after a repeat" if pid is not None and os.path.exists("/proc") else "")
            print(f"{args.model} b{args.batch} beside {name} ({medians['peer']:.2f} ms/step): ours "
                  + ", ".join(f"{wake} {medians[wake]:.2f}" for wake in WAKES)
                  + f" ms/step (medians of {len(times['peer'])}){burnt}", flush=True)
        bench.close_peer(peer)


if __name__ == "__main__":
    main()
