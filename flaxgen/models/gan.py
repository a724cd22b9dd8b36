"""GANs: the tutorials' dense GAN, a DCGAN for 28x28 images, and MLPs for 2-D mixtures.

One train_step updates the discriminator `n_critic` times and then the generator; both players'
parameters and optimizer states live in one TrainState (`params = {"g", "d"}`), so the shared
loop, strategies and checkpoints treat a GAN like any other model.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxgen.config import COMMON_DEFAULTS, ConfigError
from flaxgen.models import Family, compute_dtype
from flaxgen.models.layers import Dense, conv_implementation, conv_layers
from flaxgen.training import rng
from flaxgen.training.state import TrainState, apply_updates, loss_and_grads, make_optimizer


# Model keys that only one arch reads (config.validate refuses a changed one under another arch).
ARCH_ONLY_KEYS = {"dense": ("hidden",), "dcgan": ("dcgan_width", "conv"), "mlp2d": ("mlp_width", "mlp_depth")}


def defaults() -> dict:
    return {
        "model": {
            "family": "gan",
            "arch": "dense",            # dense | dcgan | mlp2d
            "latent_dim": 100,
            "loss": "nonsaturating",    # nonsaturating | hinge
            "r1_gamma": 0.0,            # R1 penalty on real data (0: off)
            "n_critic": 1,              # discriminator updates per generator update
            "ema_decay": 0.0,           # >0: sample from an EMA of the generator's weights
            "hidden": [256, 512],       # dense generator (discriminator mirrors it)
            "mlp_width": 128,           # mlp2d
            "mlp_depth": 3,
            "dcgan_width": 64,
            "conv": "auto",             # dcgan: auto | gemm | xla (see layers.conv_implementation)
            "dtype": "float32",         # compute dtype: float32 | bfloat16
        },
        # The discriminator's optimizer, with every key of `optim` (the generator's). Each
        # section's accum_steps / cpu_micro_batch splits that player's gradient into micro-batches.
        "optim_d": {**COMMON_DEFAULTS["optim"], "lr": 2e-4, "b1": 0.5},
    }


# Each player computes in `dtype` and returns float32 (images, logits): losses, R1 and samples
# stay at full precision.

class DenseGenerator(nn.Module):
    hidden: Sequence[int]
    shape: tuple
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        h = z
        for width in self.hidden:
            h = nn.relu(Dense(width, dtype=self.dtype)(h))
        logits = Dense(math.prod(self.shape), dtype=self.dtype)(h).astype(jnp.float32)
        return nn.sigmoid(logits).reshape(z.shape[0], *self.shape)


class DenseDiscriminator(nn.Module):
    hidden: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(Dense(width, dtype=self.dtype)(h))
        return Dense(1, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)


class DCGenerator(nn.Module):
    """z -> 7x7x(2w) -> ConvT(w, 4, s2) 14x14 -> ConvT(C, 4, s2) 28x28, sigmoid."""
    width: int
    shape: tuple
    conv: str = "gemm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        _, convt = conv_layers(self.conv, self.dtype)
        h, w, c = self.shape
        x = Dense((h // 4) * (w // 4) * 2 * self.width, dtype=self.dtype)(z)
        x = nn.relu(nn.LayerNorm(dtype=self.dtype)(x.reshape(z.shape[0], h // 4, w // 4, 2 * self.width)))
        x = nn.relu(nn.LayerNorm(dtype=self.dtype)(convt(self.width, (4, 4), (2, 2))(x)))
        return nn.sigmoid(convt(c, (4, 4), (2, 2))(x).astype(jnp.float32))


class DCDiscriminator(nn.Module):
    """Conv(w, 4, s2) -> Conv(2w, 4, s2) -> Dense(1), leaky ReLU, no normalisation (R1 regularises)."""
    width: int
    conv: str = "gemm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv, _ = conv_layers(self.conv, self.dtype)
        x = nn.leaky_relu(conv(self.width, (4, 4), (2, 2))(x), 0.2)
        x = nn.leaky_relu(conv(2 * self.width, (4, 4), (2, 2))(x), 0.2)
        return Dense(1, dtype=self.dtype)(x.reshape(x.shape[0], -1))[:, 0].astype(jnp.float32)


class MLP(nn.Module):
    width: int
    depth: int
    out: int
    leaky: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = Dense(self.width, dtype=self.dtype)(x)
            x = nn.leaky_relu(x, 0.2) if self.leaky else nn.relu(x)
        x = Dense(self.out, dtype=self.dtype)(x).astype(jnp.float32)
        return x[:, 0] if self.out == 1 else x


def build_players(config, info):
    m = config.model
    dtype = compute_dtype(m)
    if m.arch == "dense":
        shape = tuple(info["image_shape"])
        return DenseGenerator(tuple(m.hidden), shape, dtype), DenseDiscriminator(tuple(reversed(m.hidden)), dtype)
    if m.arch == "dcgan":
        shape = tuple(info["image_shape"])
        conv = conv_implementation(m.conv)
        return DCGenerator(m.dcgan_width, shape, conv, dtype), DCDiscriminator(m.dcgan_width, conv, dtype)
    if m.arch == "mlp2d":
        return (MLP(m.mlp_width, m.mlp_depth, 2, dtype=dtype),
                MLP(m.mlp_width, m.mlp_depth, 1, leaky=True, dtype=dtype))
    raise ConfigError(f"config key 'model.arch' is {m.arch!r}; use dense, dcgan or mlp2d")


def data_of(batch):
    """The real examples of a batch: images, or 2-D points."""
    return batch["image"] if "image" in batch else batch["point"]


def make(config, info) -> Family:
    m = config.model
    if m.loss not in ("nonsaturating", "hinge"):
        raise ConfigError(f"config key 'model.loss' is {m.loss!r}; use nonsaturating or hinge")
    generator, discriminator = build_players(config, info)
    tx_g = make_optimizer(config.optim, config.train.steps)
    tx_d = make_optimizer(config.optim_d, config.train.steps * m.n_critic)

    def latents(key, indices):
        keys = rng.example_keys(key, indices)
        return jax.vmap(lambda k: jax.random.normal(k, (m.latent_dim,)))(keys)

    def generate(g_params, z):
        return generator.apply({"params": g_params}, z)

    def critic(d_params, x):
        return discriminator.apply({"params": d_params}, x)

    def d_loss_fn(d_params, real, fake):
        real_logits, fake_logits = critic(d_params, real), critic(d_params, fake)
        if m.loss == "hinge":
            loss = jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))
        else:
            loss = jnp.mean(nn.softplus(-real_logits)) + jnp.mean(nn.softplus(fake_logits))
        penalty = jnp.zeros(())
        if m.r1_gamma:
            grads = jax.grad(lambda x: critic(d_params, x).sum())(real)
            penalty = jnp.mean(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, -1))
            loss = loss + 0.5 * m.r1_gamma * penalty
        return loss, {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits), "r1": penalty}

    def g_loss_fn(g_params, d_params, z):
        fake_logits = critic(d_params, generate(g_params, z))
        if m.loss == "hinge":
            return -jnp.mean(fake_logits)
        return jnp.mean(nn.softplus(-fake_logits))

    def init(key, batch):
        real = data_of(batch)
        g_key, d_key = jax.random.split(key)
        z = jnp.zeros((real.shape[0], m.latent_dim))
        params = {"g": generator.init(g_key, z)["params"], "d": discriminator.init(d_key, real)["params"]}
        opt_state = {"g": tx_g.init(params["g"]), "d": tx_d.init(params["d"])}
        extra = {"ema_g": params["g"]} if m.ema_decay else {}
        return TrainState(step=jnp.int32(0), params=params, opt_state=opt_state, extra=extra)

    def train_step(state, batch, key, report=True):
        real = data_of(batch)
        params, opt_state = dict(state.params), dict(state.opt_state)
        # Each player's gradient runs over `accum_steps` micro-batches of its own optimizer
        # section; latents follow the examples' global indices, so the split changes nothing.
        generator_params = params["g"]

        def critic_loss(d_params, real_part, key, indices):
            fake = jax.lax.stop_gradient(generate(generator_params, latents(key, indices)))
            return d_loss_fn(d_params, real_part, fake)

        for i in range(m.n_critic):
            d_loss, d_aux, grads = loss_and_grads(critic_loss, params["d"], real, jax.random.fold_in(key, i),
                                                  config.optim_d.accum_steps)
            params["d"], opt_state["d"] = apply_updates(tx_d, params["d"], opt_state["d"], grads)
        critic_params = params["d"]

        def generator_loss(g_params, real_part, key, indices):
            return g_loss_fn(g_params, critic_params, latents(key, indices)), {}

        g_loss, _, grads = loss_and_grads(generator_loss, params["g"], real, jax.random.fold_in(key, m.n_critic),
                                          config.optim.accum_steps)
        params["g"], opt_state["g"] = apply_updates(tx_g, params["g"], opt_state["g"], grads)
        extra = state.extra
        if m.ema_decay:
            extra = {"ema_g": optax.incremental_update(params["g"], extra["ema_g"], 1.0 - m.ema_decay)}
        metrics = {"d_loss": d_loss, "g_loss": g_loss, **d_aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra), metrics

    def sampling_params(state):
        return state.extra["ema_g"] if m.ema_decay else state.params["g"]

    def eval_step(state, batch, key):
        real = data_of(batch)
        fake = generate(sampling_params(state), latents(key, jnp.arange(real.shape[0], dtype=jnp.uint32)))
        d_loss, aux = d_loss_fn(state.params["d"], real, fake)
        return {"d_loss": d_loss, "d_real": aux["d_real"], "d_fake": aux["d_fake"]}

    def sample(state, key, n: int = 64):
        return generate(sampling_params(state), latents(key, jnp.arange(n, dtype=jnp.uint32)))

    def evaluate(state, source, key):
        from flaxgen import evaluation
        return evaluation.gan_metrics(sample, state, source, key, config)

    def pictures(state, source, key, outdir, step):
        from flaxgen import viz
        if m.arch == "mlp2d":
            import numpy as np
            points = jax.jit(sample, static_argnums=2)(state, key, 2500)
            return [viz.scatter_2d(points, np.asarray(source.info["centers"]),
                                   f"{outdir}/samples_{step:07d}.png", f"step {step}")]
        return viz.image_family_pictures(sample, None, state, source, key, outdir, step)

    def flops_per_example(train: bool = True):
        if train:
            # No standard formula: the critic's backward skips input gradients (fake is a
            # constant to it), the generator's step skips D's weight gradients, and R1 adds a
            # double backward. None makes the bench use XLA's count of the compiled step.
            return None
        g = jax.eval_shape(lambda: generator.init(jax.random.key(0), jnp.zeros((1, m.latent_dim))))
        return _forward_flops(lambda p, z: generator.apply(p, z), g, (1, m.latent_dim))

    return Family("gan", init, train_step, eval_step, sample, evaluate, pictures, flops_per_example)


def _forward_flops(apply, abstract_params, input_shape) -> float:
    """Forward FLOPs of one example from XLA's count of the compiled function (matmul-dominated
    models; used where no closed formula is kept by hand)."""
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params)
    compiled = jax.jit(apply).lower(params, jnp.zeros(input_shape)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0))
