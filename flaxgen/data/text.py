"""Text: tiny_shakespeare through TFDS, char- or byte-level tokens, random contiguous windows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from flaxgen.data import tfds_io
from flaxgen.data.base import DataError, DataSource
from flaxgen.training import rng

TEXT_DATASETS = {"tiny_shakespeare": ("train", "validation")}
_FIXED_EVAL_KEY = 20240902


class Tokenizer:
    """Character-level (vocabulary from the training text) or byte-level (256)."""

    def __init__(self, kind: str, chars: str | None = None):
        self.kind = kind
        if kind == "char":
            self.chars = chars
            self.index = {c: i for i, c in enumerate(chars)}
        elif kind != "byte":
            raise ValueError(f"unknown tokenizer {kind!r}; use char or byte")

    @classmethod
    def build(cls, kind: str, text: str) -> "Tokenizer":
        return cls(kind, "".join(sorted(set(text))) if kind == "char" else None)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) if self.kind == "char" else 256

    def encode(self, text: str) -> np.ndarray:
        if self.kind == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise ValueError(f"characters not in the training vocabulary: {''.join(unknown)!r}; "
                             f"remove them from the prompt (the vocabulary has {self.vocab_size})")
        return np.fromiter((self.index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, tokens) -> str:
        tokens = [int(t) for t in tokens]
        if self.kind == "byte":
            return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")
        return "".join(self.chars[t] for t in tokens if t < len(self.chars))

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars if self.kind == "char" else None}

    @classmethod
    def from_json(cls, data: dict) -> "Tokenizer":
        return cls(data["kind"], data.get("chars"))


def windows(tokens: jax.Array, starts: jax.Array, length: int) -> jax.Array:
    return tokens[starts[:, None] + jnp.arange(length)[None, :]]


@dataclass
class TextSource(DataSource):
    data_key: jax.Array = None
    block_size: int = 64
    eval_tokens: np.ndarray | None = None
    tokenizer: Tokenizer | None = None

    @classmethod
    def from_tfds(cls, config) -> "TextSource":
        name = config.data.name
        train_text = tfds_io.load_text_split(name, config.data.train_split, config.data.data_dir)
        split = config.data.eval_split
        if split == "test" and name in TEXT_DATASETS:
            split = TEXT_DATASETS[name][1]
        eval_text = tfds_io.load_text_split(name, split, config.data.data_dir)
        text = train_text.decode("utf-8")
        tokenizer = Tokenizer.build(config.data.tokenizer, text)
        eval_tokens = tokenizer.encode(eval_text.decode("utf-8")) if tokenizer.kind == "byte" else \
            np.asarray([tokenizer.index.get(c, 0) for c in eval_text.decode("utf-8")], np.int32)
        return cls._build(config, tokenizer.encode(text), eval_tokens, tokenizer)

    @classmethod
    def synthetic(cls, config) -> "TextSource":
        key = rng.stream(config.seed, "data")
        count = max(config.data.num_examples, 4 * (config.data.block_size + 1))
        tokens = np.asarray(jax.random.randint(key, (count,), 0, config.data.vocab_size), np.int32)
        return cls._build(config, tokens, tokens[: count // 4], None, config.data.vocab_size)

    @classmethod
    def stand_in(cls, config, metadata: dict) -> "TextSource":
        tokenizer = Tokenizer.from_json(metadata["tokenizer"])
        blank = np.zeros(2 * config.data.block_size + 4, np.int32)
        return cls._build(config, blank, blank, tokenizer)

    @classmethod
    def _build(cls, config, tokens, eval_tokens, tokenizer, vocab_size=None) -> "TextSource":
        block = config.data.block_size
        if len(tokens) <= block + 1 or len(eval_tokens) <= block + 1:
            raise DataError(f"data.block_size {block} is longer than the text; lower it")
        vocab = tokenizer.vocab_size if tokenizer else vocab_size
        return cls(batch_size=config.data.batch_size, arrays={"tokens": tokens},
                   info={"vocab_size": vocab, "block_size": block, "tokenizer": tokenizer},
                   data_key=rng.stream(config.seed, "data"), block_size=block,
                   eval_tokens=eval_tokens, tokenizer=tokenizer)

    def batch(self, arrays, epoch_inputs, step, indices):
        tokens = arrays["tokens"]
        keys = rng.example_keys(rng.step_key(self.data_key, step), indices)
        high = tokens.shape[0] - self.block_size - 1
        starts = jax.vmap(lambda k: jax.random.randint(k, (), 0, high))(keys)
        window = windows(tokens, starts, self.block_size + 1)
        return {"inputs": window[:, :-1], "targets": window[:, 1:]}

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict]:
        high = len(self.eval_tokens) - self.block_size - 1
        key = jax.random.key(_FIXED_EVAL_KEY)
        tokens = jnp.asarray(self.eval_tokens)
        for i in range(max_batches or 20):
            starts = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, high)
            window = np.asarray(windows(tokens, starts, self.block_size + 1))
            yield {"inputs": window[:, :-1], "targets": window[:, 1:]}

    def metadata(self) -> dict:
        return {"tokenizer": self.tokenizer.to_json()} if self.tokenizer else {}
