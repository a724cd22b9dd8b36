"""Per-example losses shared by the image families."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def as_rows(x: jax.Array) -> jax.Array:
    """x as [batch, features], kept 2-D for the elementwise work that follows.

    XLA:CPU's YNNPACK fusions run elementwise-then-reduce on [B, H, W, 1] operands ~30x slower
    than on [B, H*W] (4 ms vs 0.13 ms at 256x28x28x1), and XLA sinks a plain reshape back past
    the elementwise ops; the barrier pins the 2-D shape (it costs no copy).
    """
    return jax.lax.optimization_barrier(x.reshape(x.shape[0], -1))


def bernoulli_nats(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Summed binary cross-entropy per example, -log p(targets | logits), in nats:
    softplus(l) - l*x, with a hand-written gradient (`_bernoulli_rows`)."""
    return _bernoulli_rows(as_rows(logits), as_rows(targets))


@jax.custom_vjp
def _bernoulli_rows(logits_BxP, targets_BxP):
    return _bernoulli_forward(logits_BxP, targets_BxP)[0]


def _bernoulli_forward(logits_BxP, targets_BxP):
    # One exp and one log1p per pixel give both the loss and its gradient sigmoid(l) - x, in the
    # same pass; autodiff of softplus spends a second exp. The dense autoencoder's step is ~1.18x
    # faster for it (2.46 vs 2.93 ms, interleaved, 2-core CPU); the VAEs are unchanged.
    e = jnp.exp(-jnp.abs(logits_BxP))
    nats_B = (jnp.maximum(logits_BxP, 0.0) + jnp.log1p(e) - logits_BxP * targets_BxP).sum(-1)
    probs = jnp.where(logits_BxP >= 0, 1.0, e) / (1.0 + e)
    return nats_B, (probs - targets_BxP, logits_BxP)


def _bernoulli_backward(residuals, g_B):
    dlogits, logits_BxP = residuals
    # the targets' gradient is -l; XLA drops it (and keeps no logits) when nothing uses it
    return g_B[:, None] * dlogits, -g_B[:, None] * logits_BxP


_bernoulli_rows.defvjp(_bernoulli_forward, _bernoulli_backward)
