"""Image datasets (MNIST, Fashion-MNIST, synthetic) as in-memory uint8 arrays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from flaxgen.data import tfds_io
from flaxgen.data.base import DataError, DataSource
from flaxgen.training import rng

# Seed-independent key for the test set's one fixed binarization, so every run scores the same set.
_FIXED_EVAL_KEY = 20240901


def binarize(keys: jax.Array, pixels: jax.Array) -> jax.Array:
    """Bernoulli draw per pixel, one key per example (split-invariant)."""
    uniform = jax.vmap(lambda k, x: jax.random.uniform(k, x.shape))(keys, pixels)
    return (uniform < pixels).astype(jnp.float32)


@dataclass
class ImageSource(DataSource):
    data_key: jax.Array = None
    dynamic_binarize: bool = False
    eval_images: np.ndarray | None = None
    eval_labels: np.ndarray | None = None

    @property
    def num_train(self) -> int:
        return len(self.arrays["labels"])

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.batch_size

    @classmethod
    def from_tfds(cls, config) -> "ImageSource":
        images, labels = tfds_io.load_image_split(config.data.name, config.data.train_split,
                                                  config.data.data_dir)
        eval_images, eval_labels = tfds_io.load_image_split(config.data.name, config.data.eval_split,
                                                            config.data.data_dir)
        return cls._build(config, images, labels, eval_images, eval_labels)

    @classmethod
    def synthetic(cls, config) -> "ImageSource":
        """Random images of `data.image_shape`: for benchmarks, no dataset and no network."""
        key = rng.stream(config.seed, "data")
        shape = (config.data.num_examples, *config.data.image_shape)
        images = np.asarray(jax.random.randint(key, shape, 0, 256, dtype=jnp.int32), np.uint8)
        labels = np.asarray(jax.random.randint(jax.random.fold_in(key, 1), shape[:1], 0, 10),
                            np.int32)
        return cls._build(config, images, labels, images[:1000], labels[:1000])

    @classmethod
    def _build(cls, config, images, labels, eval_images, eval_labels) -> "ImageSource":
        if len(labels) < config.data.batch_size:
            raise DataError(f"data.batch_size {config.data.batch_size} exceeds the {len(labels)} "
                            f"training examples of '{config.data.name}'; lower data.batch_size")
        info = {"image_shape": tuple(images.shape[1:]), "num_classes": int(labels.max()) + 1,
                "binarized": config.data.binarize == "dynamic", "num_train": len(labels)}
        return cls(batch_size=config.data.batch_size,
                   arrays={"images": images, "labels": labels}, info=info,
                   data_key=rng.stream(config.seed, "data"),
                   dynamic_binarize=config.data.binarize == "dynamic",
                   eval_images=eval_images, eval_labels=eval_labels)

    @classmethod
    def stand_in(cls, config, metadata: dict) -> "ImageSource":
        blank_images = np.zeros((config.data.batch_size, *metadata["image_shape"]), np.uint8)
        blank_labels = np.zeros(config.data.batch_size, np.int32)
        source = cls._build(config, blank_images, blank_labels, blank_images, blank_labels)
        source.info.update(num_classes=metadata["num_classes"], num_train=metadata["num_train"])
        return source

    def metadata(self) -> dict:
        return {"image_shape": list(self.info["image_shape"]), "num_classes": self.info["num_classes"],
                "num_train": self.info["num_train"]}

    def epoch_inputs(self, step: int) -> dict:
        epoch = step // self.steps_per_epoch
        if getattr(self, "_cached_epoch", None) != epoch:
            key = jax.random.fold_in(self.data_key, epoch)
            self._cached_inputs = {"order": np.asarray(jax.random.permutation(key, self.num_train), np.int32)}
            self._cached_epoch = epoch
        return self._cached_inputs

    def batch(self, arrays, epoch_inputs, step, indices):
        position = (step % self.steps_per_epoch) * self.batch_size + indices.astype(jnp.int32)
        index = epoch_inputs["order"][position]
        pixels = arrays["images"][index].astype(jnp.float32) / 255.0
        if self.dynamic_binarize:
            keys = rng.example_keys(rng.step_key(self.data_key, step), indices)
            pixels = binarize(keys, pixels)
        return {"image": pixels, "label": arrays["labels"][index]}

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole eval split as float images (fixed-binarized when training binarizes)."""
        if getattr(self, "_eval_cache", None) is None:
            pixels = self.eval_images.astype(np.float32) / 255.0
            if self.dynamic_binarize:
                key = jax.random.key(_FIXED_EVAL_KEY)
                keys = rng.example_keys(key, jnp.arange(len(pixels), dtype=jnp.uint32))
                pixels = np.asarray(jax.jit(binarize)(keys, pixels))
            self._eval_cache = (pixels, self.eval_labels)
        return self._eval_cache

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        pixels, labels = self.eval_arrays()
        count = len(labels) // batch_size
        if count == 0:
            raise DataError(f"data.eval_batch_size {batch_size} exceeds the {len(labels)} eval "
                            f"examples; lower data.eval_batch_size")
        if max_batches is not None:
            count = min(count, max_batches)
        for i in range(count):
            chunk = slice(i * batch_size, (i + 1) * batch_size)
            yield {"image": pixels[chunk], "label": labels[chunk]}
