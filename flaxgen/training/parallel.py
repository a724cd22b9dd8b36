"""Parallel strategies for the one loop: single device, mesh (jit + NamedSharding) and pmap.

Step functions are written once. They call `pmean` on gradients and metrics and
`example_indices` for per-example randomness; both read the axis context that the pmap strategy
sets while tracing, and are plain (no-op / arange) otherwise, where XLA inserts the collectives.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flaxgen.config import ConfigError

_context = threading.local()
AXIS = "data"


@contextlib.contextmanager
def _tracing_context(name: str, value):
    """`_context.<name>` is `value` while a strategy traces its step."""
    previous = getattr(_context, name, None)
    setattr(_context, name, value)
    try:
        yield
    finally:
        setattr(_context, name, previous)


def axis_context(axis_name: str, axis_size: int):
    return _tracing_context("axis", (axis_name, axis_size))


def current_axis():
    return getattr(_context, "axis", None)


def pmean(tree):
    """Mean across data-parallel replicas: lax.pmean under pmap, identity under jit."""
    axis = current_axis()
    if axis is None:
        return tree
    return jax.lax.pmean(tree, axis[0])


def psum(tree):
    axis = current_axis()
    if axis is None:
        return tree
    return jax.lax.psum(tree, axis[0])


def example_indices(local_batch: int) -> jax.Array:
    """Global indices of this replica's examples within the global batch. Under a mesh they are
    sharded like the batch, and so is all that is drawn from them (GAN latents, VAE noise):
    otherwise XLA may compute a generator's whole batch on every device."""
    axis = current_axis()
    offsets = jnp.arange(local_batch, dtype=jnp.uint32)
    sharding = getattr(_context, "example_sharding", None)
    if sharding is not None:
        offsets = jax.lax.with_sharding_constraint(offsets, sharding)
    if axis is None:
        return offsets
    return jax.lax.axis_index(axis[0]).astype(jnp.uint32) * local_batch + offsets


def num_replicas() -> int:
    axis = current_axis()
    return 1 if axis is None else axis[1]


@dataclass
class Strategy:
    """How state, data and steps are placed. `compile` returns a callable of (state, *args)."""

    name: str
    devices: list

    def __post_init__(self):
        """Subclasses build their placement objects here (the dataclass __init__ calls it)."""

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    # -- placement ---------------------------------------------------------------------------
    def put_state(self, state):
        raise NotImplementedError

    def one_copy(self, state):
        """One copy of a replicated tree (state or metrics): what checkpoints and logs see."""
        return state

    def put_replicated(self, tree):
        return self.put_state(tree)

    def constrain_batch(self, batch):
        """Inside the step: tell the compiler how the batch is laid out (mesh only)."""
        return batch

    def wrap(self, fn: Callable, donate_state: bool = True) -> Callable:
        """`fn(state, replicated_args, step, report) -> (state, out)`: returns the compiled callable."""
        raise NotImplementedError

    @property
    def max_steps_in_flight(self) -> int | None:
        """How many dispatched steps may run ahead of the host; None: no bound.

        Host (CPU) devices deadlock in a step's cross-device all-reduce when many steps are
        queued at once (XLA aborts after its 40 s rendezvous timeout; reproduced with a bare
        psum loop on jax 0.10.2, 2 or 8 host devices), and do not with two in flight.
        """
        if self.num_devices > 1 and self.devices[0].platform == "cpu":
            return 2
        return None

    def dispatch_limiter(self) -> "DispatchLimiter":
        return DispatchLimiter(self.max_steps_in_flight)


class DispatchLimiter:
    """Call after each step's dispatch with an output that is never donated (its metrics):
    waits for the step `depth` dispatches back, so at most `depth` steps are in flight."""

    def __init__(self, depth: int | None):
        self.depth = depth
        self.pending = collections.deque()

    def __call__(self, step_outputs) -> None:
        if self.depth is None:
            return
        self.pending.append(step_outputs)
        if len(self.pending) > self.depth:
            jax.block_until_ready(self.pending.popleft())


class SingleDevice(Strategy):
    def put_state(self, state):
        return jax.device_put(state, self.devices[0])

    def wrap(self, fn, donate_state=True):
        return jax.jit(fn, donate_argnums=(0,) if donate_state else ())


class MeshStrategy(Strategy):
    """jax.jit over a 1-D mesh: parameters replicated, the batch sharded on the data axis."""

    def __post_init__(self):
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

    def put_state(self, state):
        return jax.device_put(state, self.replicated)

    def constrain_batch(self, batch):
        return jax.lax.with_sharding_constraint(batch, self.batch_sharding)

    def wrap(self, fn, donate_state=True):
        def traced(*args):
            with _tracing_context("example_sharding", self.batch_sharding):
                return fn(*args)

        return jax.jit(traced, out_shardings=self.replicated,
                       donate_argnums=(0,) if donate_state else ())


class PmapStrategy(Strategy):
    """jax.pmap with explicit pmean; state and data carry a leading device axis."""

    def __post_init__(self):
        # pmap (jit + shard_map since jax 0.8) takes inputs sharded along that leading axis.
        self.stacked = NamedSharding(Mesh(np.array(self.devices), (AXIS,)), P(AXIS))

    def put_state(self, state):
        copies = self.num_devices
        return jax.device_put(
            jax.tree.map(lambda x: np.broadcast_to(np.asarray(x)[None], (copies, *np.shape(x))), state),
            self.stacked)

    def one_copy(self, state):
        """Device 0's copy, without gathering the others."""
        return jax.tree.map(lambda x: x.addressable_shards[0].data[0], state)

    def wrap(self, fn, donate_state=True):
        size = self.num_devices

        def traced(state, args, step, report):
            with axis_context(AXIS, size):
                return fn(state, args, step, report)

        return jax.pmap(traced, axis_name=AXIS, in_axes=(0, 0, None, None), devices=self.devices,
                        donate_argnums=(0,) if donate_state else ())


def make_strategy(name: str = "auto", num_devices: int | None = None,
                  global_batch: int | None = None) -> Strategy:
    available = jax.local_devices()
    if num_devices is None:
        num_devices = len(available)
    if num_devices < 1 or num_devices > len(available):
        raise ConfigError(
            f"parallel.num_devices={num_devices} but {len(available)} device(s) are visible; "
            f"set parallel.num_devices between 1 and {len(available)}")
    devices = available[:num_devices]
    if name == "auto":
        name = "mesh" if num_devices > 1 else "single"
    if name == "single":
        devices = devices[:1]
    if global_batch is not None and global_batch % len(devices):
        raise ConfigError(
            f"global batch {global_batch} does not divide across {len(devices)} devices; "
            f"use a multiple of {len(devices)} (data.batch_size) or set parallel.num_devices")
    cls = {"single": SingleDevice, "mesh": MeshStrategy, "pmap": PmapStrategy}.get(name)
    if cls is None:
        raise ConfigError(f"unknown parallel.strategy {name!r}; use auto, single, mesh or pmap")
    return cls(name=name, devices=devices)

