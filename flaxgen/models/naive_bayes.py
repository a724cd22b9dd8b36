"""Naive Bayes over pixels: independent Bernoulli per pixel, Laplace-smoothed counts.

The "first generative model": fit by counting (train_step adds a batch's counts, so it runs
through the shared loop like every other family), with an exact test log-likelihood.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flaxgen.models import Family
from flaxgen.training import parallel
from flaxgen.training.state import TrainState


def defaults() -> dict:
    return {"model": {"family": "naive_bayes", "smoothing": 1.0, "class_conditional": False}}


def make(config, info) -> Family:
    alpha = config.model.smoothing
    shape = tuple(info["image_shape"])
    classes = info["num_classes"] if config.model.class_conditional else 1

    def init(key, batch):
        counts = {"ones": jnp.zeros((classes, *shape), jnp.float32),
                  "total": jnp.zeros((classes,), jnp.float32)}
        return TrainState(step=jnp.int32(0), params=counts, opt_state=())

    def group(batch):
        if classes == 1:
            return jnp.ones((batch["image"].shape[0], 1), jnp.float32)
        return jax.nn.one_hot(batch["label"], classes)

    def log_probs(params):
        p_one = (params["ones"] + alpha) / (params["total"].reshape(-1, *[1] * len(shape)) + 2 * alpha)
        prior = (params["total"] + alpha) / (params["total"].sum() + classes * alpha)
        return jnp.log(p_one), jnp.log1p(-p_one), jnp.log(prior)

    def nll(params, x):
        """Exact -log p(x) in nats per image (marginal over classes when class-conditional)."""
        log_one, log_zero, log_prior = log_probs(params)
        flat = x.reshape(x.shape[0], -1)
        per_class = flat @ log_one.reshape(classes, -1).T + (1 - flat) @ log_zero.reshape(classes, -1).T
        return -jax.nn.logsumexp(per_class + log_prior, axis=-1)

    def train_step(state, batch, key, report=True):
        x = batch["image"]
        weights = group(batch)
        ones = jnp.einsum("bk,bhwc->khwc", weights, x)
        added = parallel.psum({"ones": ones, "total": weights.sum(0)})
        params = jax.tree.map(jnp.add, state.params, added)
        metrics = parallel.pmean({"loss": nll(params, x).mean()})
        return state.replace(step=state.step + 1, params=params), metrics

    def eval_step(state, batch, key):
        return {"nll": nll(state.params, batch["image"]).mean()}

    def sample(state, key, n: int = 64):
        log_one, _, log_prior = log_probs(state.params)
        pick, draw = jax.random.split(key)
        which = jax.random.categorical(pick, log_prior, shape=(n,))
        return jax.random.bernoulli(draw, jnp.exp(log_one)[which]).astype(jnp.float32)

    def evaluate(state, source, key):
        from flaxgen.evaluation import mean_over_batches
        return mean_over_batches(jax.jit(eval_step), state, source, key, config)

    def pictures(state, source, key, outdir, step):
        from flaxgen import viz
        return viz.image_family_pictures(sample, None, state, source, key, outdir, step)

    def flops_per_example(train: bool = True):
        return 4 * math.prod(shape) * classes

    return Family("naive_bayes", init, train_step, eval_step, sample, evaluate, pictures,
                  flops_per_example)
