"""Synthetic 2-D Gaussian mixtures, drawn from the data key (no files)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from flaxgen.data.base import DataSource
from flaxgen.training import rng


def ring_centers(count: int = 8, radius: float = 2.0) -> np.ndarray:
    angles = 2 * np.pi * np.arange(count) / count
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1).astype(np.float32)


def grid_centers(values=(-4, -2, 0, 2, 4)) -> np.ndarray:
    return np.array([(x, y) for x in values for y in values], dtype=np.float32)


MIXTURES = {
    "ring8": (ring_centers, 0.02),
    "grid25": (grid_centers, 0.05),
}


def draw(keys: jax.Array, centers: jax.Array, std: float) -> jax.Array:
    def one(key):
        pick, noise = jax.random.split(key)
        center = centers[jax.random.randint(pick, (), 0, centers.shape[0])]
        return center + std * jax.random.normal(noise, (2,))

    return jax.vmap(one)(keys)


@dataclass
class MixtureSource(DataSource):
    data_key: jax.Array = None
    std: float = 0.0

    @classmethod
    def from_config(cls, config) -> "MixtureSource":
        make_centers, std = MIXTURES[config.data.name]
        centers = make_centers()
        info = {"point_dim": 2, "centers": centers.tolist(), "std": std}
        return cls(batch_size=config.data.batch_size, arrays={"centers": centers}, info=info,
                   data_key=rng.stream(config.seed, "data"), std=std)

    def batch(self, arrays, epoch_inputs, step, indices):
        keys = rng.example_keys(rng.step_key(self.data_key, step), indices)
        return {"point": draw(keys, arrays["centers"], self.std)}

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        key = jax.random.key(7)
        for i in range(max_batches or 1):
            keys = rng.example_keys(jax.random.fold_in(key, i), jnp.arange(batch_size, dtype=jnp.uint32))
            yield {"point": np.asarray(draw(keys, jnp.asarray(self.arrays["centers"]), self.std))}
