"""Model families. Each module defines `defaults()` (its config keys) and `make(config, info)`
returning a `Family`: the few pure functions the shared loop calls. The loop never asks which
family it is running."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

from flaxgen.config import ConfigError

FAMILIES = {
    "autoencoder": "flaxgen.models.autoencoder",
    "vae": "flaxgen.models.vae",
    "naive_bayes": "flaxgen.models.naive_bayes",
    "gan": "flaxgen.models.gan",
    "transformer": "flaxgen.models.transformer",
}


@dataclass(frozen=True)
class Family:
    """The model-family contract.

    init(key, batch) -> state                      state is a pytree (TrainState)
    train_step(state, batch, key) -> (state, metrics)   pure; jit/pmap-able
        report=True: whether the metrics will be read; a step may skip diagnostics-only
        metrics when False (the shared gradient step then reports grad_norm as NaN unless it clips)
    eval_step(state, batch, key) -> metrics        per-batch means, pure
    sample(state, key, n, **options) -> outputs    pure where possible
    evaluate(state, source, key) -> dict           the family's full test metrics (flaxgen eval)
    pictures(state, source, key, outdir, step)     PNGs written at each eval
    flops_per_example(train: bool) -> float | None analytic FLOPs for MFU (None: use XLA's count)
    """

    name: str
    init: Callable
    train_step: Callable
    eval_step: Callable
    sample: Callable
    evaluate: Optional[Callable] = None
    pictures: Optional[Callable] = None
    flops_per_example: Optional[Callable] = None
    tokens_per_example: int = 0        # >0 for sequence models: reports tokens/s


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(model_config):
    """The jnp dtype named by `model.dtype`: what a model's layers compute in. Parameters,
    optimizer state and losses stay float32 whatever it is."""
    import jax.numpy as jnp

    if model_config.dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"config key 'model.dtype' is {model_config.dtype!r}; use {' or '.join(COMPUTE_DTYPES)}")
    return jnp.dtype(model_config.dtype)


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_family_module(name: str):
    if name not in FAMILIES:
        raise ConfigError(f"unknown model.family {name!r}; use one of: {', '.join(family_names())}")
    return importlib.import_module(FAMILIES[name])


def make_family(config, info: dict) -> Family:
    return get_family_module(config.model.family).make(config, info)

