"""The data-source contract.

A source keeps its whole training set as arrays that the strategy places on every device. The
batch for a step is a pure, traceable function of (arrays, per-epoch inputs, step, example
indices), so the loop builds it inside the jitted step: no host work per step, an exact resume
(the data position is a function of the step), and the same examples whatever the device split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import jax
import numpy as np


_NO_EPOCH_INPUTS: dict = {}


class DataError(RuntimeError):
    """Missing or unusable data; the message says how to get it."""


@dataclass
class DataSource:
    batch_size: int
    arrays: dict                       # numpy arrays, replicated on devices by the loop
    info: dict = field(default_factory=dict)  # what models need to know: shapes, vocab, classes

    def epoch_inputs(self, step: int) -> dict:
        """Host-computed inputs that change at most once per epoch (e.g. the shuffle order).
        Returns the same object while they do not change, so the loop re-places them only then."""
        return _NO_EPOCH_INPUTS

    def batch(self, arrays: dict, epoch_inputs: dict, step: jax.Array, indices: jax.Array) -> dict:
        """The examples at global positions `indices` of step `step`'s batch. Pure; traced."""
        raise NotImplementedError

    def example_batch(self) -> dict:
        """Zeros with the global batch's shapes and dtypes (for init), without compiling."""
        import jax.numpy as jnp

        shapes = jax.eval_shape(self.batch, self.arrays, self.epoch_inputs(0), jnp.int32(0),
                                jnp.arange(self.batch_size, dtype=jnp.uint32))
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        """Fixed evaluation batches (same for every seed and run)."""
        return iter(())

    def metadata(self) -> dict:
        """JSON-able facts saved into the workdir (e.g. a tokenizer, the image shape), enough to
        rebuild the model without the dataset (see `stand_in`)."""
        return {}

    @classmethod
    def stand_in(cls, config, metadata: dict) -> "DataSource":
        """A source with a trained run's shapes and vocabulary but none of its data: sampling a
        workdir must not need the dataset it was trained on."""
        raise NotImplementedError


# The `data` keys each kind of source reads, beyond name and the batch sizes that all read.
KEYS_READ_BY_KIND = {
    "a TFDS image set": ("data_dir", "train_split", "eval_split", "binarize"),
    "synthetic images": ("image_shape", "num_examples", "binarize"),
    "a TFDS text": ("data_dir", "train_split", "eval_split", "block_size", "tokenizer"),
    "synthetic tokens": ("num_examples", "block_size", "vocab_size"),
    "a 2-D mixture": (),
}


def source_kind(name: str) -> str:
    """Which kind of source `data.name` selects (a key of KEYS_READ_BY_KIND)."""
    from flaxgen.data import mixtures, text

    if name in mixtures.MIXTURES:
        return "a 2-D mixture"
    if name == "synthetic_images":
        return "synthetic images"
    if name == "synthetic_tokens":
        return "synthetic tokens"
    if name in text.TEXT_DATASETS:
        return "a TFDS text"
    return "a TFDS image set"


def make_source(config, metadata: dict | None = None) -> DataSource:
    """The configured source; with a workdir's saved `metadata`, a dataset-free stand-in."""
    from flaxgen.data import images, mixtures, text

    kind = source_kind(config.data.name)
    if kind == "a 2-D mixture":
        return mixtures.MixtureSource.from_config(config)
    if metadata and kind == "a TFDS text" and "tokenizer" in metadata:
        return text.TextSource.stand_in(config, metadata)
    if metadata and "image_shape" in metadata:
        return images.ImageSource.stand_in(config, metadata)
    if kind == "synthetic images":
        return images.ImageSource.synthetic(config)
    if kind == "synthetic tokens":
        return text.TextSource.synthetic(config)
    if kind == "a TFDS text":
        return text.TextSource.from_tfds(config)
    return images.ImageSource.from_tfds(config)
