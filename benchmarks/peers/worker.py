"""The worker side of `flaxgen.bench.PipedPeer`: each peer trains in a process of its own, as its
users run it, and never shares a process (thread pools, allocator, loaded libraries) with
flaxgen or with another framework."""
from __future__ import annotations

import os
import sys


def protocol_channel():
    """The real stdout, for the protocol alone; stdout itself then goes to stderr, so that stray
    prints from a framework cannot corrupt it. Call before importing the framework."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return channel


def serve(channel, name: str, run) -> None:
    """Say 'ready NAME', then answer each line N on stdin with run(N), the seconds per step of
    N more steps, until stdin closes."""
    channel.write(f"ready {name}\n")
    channel.flush()
    for line in sys.stdin:
        channel.write(f"{run(int(line))!r}\n")
        channel.flush()
