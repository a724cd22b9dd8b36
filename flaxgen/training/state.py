"""Train-state pytrees, optimizers, and the gradient step every family shares."""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from flaxgen.training import parallel


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `params`/`opt_state` may be dicts of several
    players (a GAN's generator and discriminator); `extra` holds the rest (EMA weights, counts)."""

    step: jax.Array
    params: Any
    opt_state: Any
    extra: Any = None


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
    decay_steps = optim.decay_steps or total_steps
    if optim.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
            decay_steps=max(decay_steps, optim.warmup_steps + 1), end_value=optim.min_lr)
    elif optim.warmup_steps:
        lr = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
    else:
        lr = optim.lr
    parts = []
    if optim.grad_clip:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.name == "adam":
        parts.append(optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    elif optim.name == "adamw":
        matrices_only = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
        parts.append(optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                 weight_decay=optim.weight_decay, mask=matrices_only))
    else:
        parts.append(optax.sgd(lr))
    return optax.chain(*parts)


def split_microbatches(batch, count: int):
    return jax.tree.map(lambda x: x.reshape(count, x.shape[0] // count, *x.shape[1:]), batch)


def loss_and_grads(loss_fn: Callable, params, batch, key, accum_steps: int = 1):
    """Mean loss, aux and gradients over `batch`, accumulated over micro-batches if asked.

    `loss_fn(params, batch, key, indices) -> (loss, aux)`; `indices` are the examples' global
    positions in the step's batch, for per-example keys that do not depend on the device split
    or on accumulation.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    indices = parallel.example_indices(jax.tree.leaves(batch)[0].shape[0])
    if accum_steps == 1:
        (loss, aux), grads = grad_fn(params, batch, key, indices)
    else:
        micro = split_microbatches((batch, indices), accum_steps)

        def body(carry, inputs):
            mb, mb_indices = inputs
            (loss, aux), grads = grad_fn(params, mb, key, mb_indices)
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(grad_fn, params, first[0], key, first[1])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][0], shapes[0][1], shapes[1]))
        (loss, aux, grads), _ = jax.lax.scan(body, zeros, micro)
        loss, aux, grads = jax.tree.map(lambda x: x / accum_steps, (loss, aux, grads))
    return parallel.pmean((loss, aux, grads))


def apply_updates(tx: optax.GradientTransformation, params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def gradient_step(tx, loss_fn: Callable, optim):
    """A standard single-player train_step: one loss, one optimizer (`tx`, built from the
    config's `optim` section, whose accum_steps and grad_clip the step also follows)."""

    def train_step(state: TrainState, batch, key, report=True):
        loss, aux, grads = loss_and_grads(loss_fn, state.params, batch, key, optim.accum_steps)
        if optim.grad_clip:
            # tx clips by this same norm: XLA computes it once, so it is free on every step
            grad_norm = optax.tree.norm(grads)
        else:
            grad_norm, grads = norm_if_reported(grads, report)
        params, opt_state = apply_updates(tx, state.params, state.opt_state, grads)
        metrics = {"loss": loss, **aux, "grad_norm": grad_norm}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def norm_if_reported(grads, report):
    """(global norm of grads; grads). On CPU the norm is NaN unless `report`: it is a diagnostic,
    and only the steps whose metrics the loop reads pay for it (a pass over every gradient, which
    also makes XLA share Adam's squares instead of fusing them into the update; MLP VAE step on
    2 CPU cores: ~1.15x faster without it). Each leaf gets its own cond, and the barrier orders
    the update after them: one cond over all the gradients, or none, cost most of that gain back.

    Elsewhere the norm is computed on every step, with no cond: XLA:GPU runs a conditional by
    copying its predicate to the host and waiting for the stream (ConditionalThunk), which would
    be one pipeline drain per leaf; on an accelerator the extra pass is a fused reduction."""

    def skipped_unless_reported(report, grads):
        skip = lambda leaf: jnp.float32(jnp.nan)
        squares = [jax.lax.cond(report, lambda leaf: jnp.sum(jnp.square(leaf)), skip, leaf)
                   for leaf in jax.tree.leaves(grads)]
        squares, grads = jax.lax.optimization_barrier((squares, grads))
        return jnp.sqrt(sum(squares)), grads

    def every_step(report, grads):
        return optax.tree.norm(grads), grads

    # Resolved when the step is lowered, for the platform it is lowered for: no runtime switch.
    return jax.lax.platform_dependent(report, grads, cpu=skipped_unless_reported, default=every_step)
