"""Key derivation. Every random number flows from `config.seed` through these functions.

Streams are `fold_in(root, constant)` so adding a stream never shifts the others; per-step keys
are `fold_in(stream, step)` so a resumed run sees exactly the keys of an uninterrupted one.
"""
from __future__ import annotations

import jax

# Fixed constants, never reordered: changing one changes every experiment's numbers.
STREAMS = {"init": 1, "data": 2, "train": 3, "eval": 4, "sample": 5}


def root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def stream(seed_or_root, name: str) -> jax.Array:
    root = root_key(seed_or_root) if isinstance(seed_or_root, int) else seed_or_root
    return jax.random.fold_in(root, STREAMS[name])


def step_key(stream_key: jax.Array, step) -> jax.Array:
    return jax.random.fold_in(stream_key, step)


def example_keys(key: jax.Array, example_indices: jax.Array) -> jax.Array:
    """One key per example from its global index, so draws do not depend on the device split."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(example_indices)
