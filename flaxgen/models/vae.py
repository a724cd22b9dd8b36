"""Variational autoencoders with Bernoulli pixels: dense MLP, or the Keras example's conv net."""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxgen.models import Family, compute_dtype
from flaxgen.models.layers import Dense, conv_implementation, conv_layers
from flaxgen.models.losses import bernoulli_nats
from flaxgen.training import rng
from flaxgen.training.state import TrainState, gradient_step, make_optimizer


# Model keys that only one arch reads (config.validate refuses a changed one under another arch).
ARCH_ONLY_KEYS = {"dense": ("encoder_hidden", "decoder_hidden"), "conv": ("conv_dense", "conv")}


def defaults() -> dict:
    return {"model": {
        "family": "vae",
        "arch": "dense",                 # dense | conv
        "encoder_hidden": [512, 256],    # dense
        "decoder_hidden": [256, 512],    # dense
        "latent_dim": 32,
        "conv_dense": 16,                # conv: the Dense(16) before the latent
        "conv": "auto",                  # conv: auto | gemm | xla (see layers.conv_implementation)
        "dtype": "float32",              # compute dtype: float32 | bfloat16
    }}


def gaussian_head(h, latent_dim, dtype):
    """(mean, logvar) in float32: the reparameterisation and the KL need full precision."""
    mean = Dense(latent_dim, dtype=dtype, name="mean")(h)
    logvar = Dense(latent_dim, dtype=dtype, name="logvar")(h)
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class DenseEncoder(nn.Module):
    hidden: Sequence[int]
    latent_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        h = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(Dense(width, dtype=self.dtype)(h))
        return gaussian_head(h, self.latent_dim, self.dtype)


class DenseDecoder(nn.Module):
    hidden: Sequence[int]
    image_shape: tuple
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_BxZ):
        h = z_BxZ
        for width in self.hidden:
            h = nn.relu(Dense(width, dtype=self.dtype)(h))
        logits = Dense(math.prod(self.image_shape), dtype=self.dtype)(h).astype(jnp.float32)
        return logits.reshape(z_BxZ.shape[0], *self.image_shape)


class ConvEncoder(nn.Module):
    """Conv2D(32,3,s2) -> Conv2D(64,3,s2) -> Dense(16) -> (mean, logvar)."""
    latent_dim: int
    dense: int
    conv: str = "gemm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        conv, _ = conv_layers(self.conv, self.dtype)
        h = nn.relu(conv(32, (3, 3), (2, 2))(x_BxHxWxC))
        h = nn.relu(conv(64, (3, 3), (2, 2))(h))
        h = nn.relu(Dense(self.dense, dtype=self.dtype)(h.reshape(h.shape[0], -1)))
        return gaussian_head(h, self.latent_dim, self.dtype)


class ConvDecoder(nn.Module):
    """Dense(7*7*64) -> ConvT(64,3,s2) -> ConvT(32,3,s2) -> ConvT(1,3) logits."""
    image_shape: tuple
    conv: str = "gemm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z_BxZ):
        _, convt = conv_layers(self.conv, self.dtype)
        height, width, channels = self.image_shape
        h = nn.relu(Dense((height // 4) * (width // 4) * 64, dtype=self.dtype)(z_BxZ))
        h = h.reshape(z_BxZ.shape[0], height // 4, width // 4, 64)
        h = nn.relu(convt(64, (3, 3), (2, 2))(h))
        h = nn.relu(convt(32, (3, 3), (2, 2))(h))
        return convt(channels, (3, 3), (1, 1))(h).astype(jnp.float32)


class VAE(nn.Module):
    encoder: nn.Module
    decoder: nn.Module

    def __call__(self, x, eps):
        mean, logvar = self.encoder(x)
        z = mean + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z), mean, logvar

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, 1)) per example."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def build_model(config, info) -> VAE:
    m = config.model
    shape = tuple(info["image_shape"])
    dtype = compute_dtype(m)
    if m.arch == "dense":
        return VAE(DenseEncoder(tuple(m.encoder_hidden), m.latent_dim, dtype),
                   DenseDecoder(tuple(m.decoder_hidden), shape, dtype))
    if m.arch == "conv":
        conv = conv_implementation(m.conv)
        return VAE(ConvEncoder(m.latent_dim, m.conv_dense, conv, dtype), ConvDecoder(shape, conv, dtype))
    from flaxgen.config import ConfigError
    raise ConfigError(f"config key 'model.arch' is {m.arch!r}; use dense or conv")


def make(config, info) -> Family:
    model = build_model(config, info)
    latent = config.model.latent_dim
    tx = make_optimizer(config.optim, config.train.steps)

    def noise(key, indices):
        keys = rng.example_keys(key, indices)
        return jax.vmap(lambda k: jax.random.normal(k, (latent,)))(keys)

    def elbo_terms(params, x, eps):
        logits, mean, logvar = model.apply({"params": params}, x, eps)
        return -bernoulli_nats(logits, x), gaussian_kl(mean, logvar)

    def init(key, batch):
        x = batch["image"]
        params = model.init(key, x, jnp.zeros((x.shape[0], latent)))["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))

    def loss_fn(params, batch, key, indices):
        log_lik, kl = elbo_terms(params, batch["image"], noise(key, indices))
        return jnp.mean(kl - log_lik), {"recon_nats": -log_lik.mean(), "kl": kl.mean()}

    def eval_step(state, batch, key):
        x = batch["image"]
        log_lik, kl = elbo_terms(state.params, x, noise(key, jnp.arange(x.shape[0], dtype=jnp.uint32)))
        return {"neg_elbo": jnp.mean(kl - log_lik), "recon_nats": -log_lik.mean(), "kl": kl.mean()}

    def reconstruct(state, images):
        mean, _ = model.apply({"params": state.params}, images, method=model.encode)
        return jax.nn.sigmoid(model.apply({"params": state.params}, mean, method=model.decode))

    def decode(state, z):
        return jax.nn.sigmoid(model.apply({"params": state.params}, z, method=model.decode))

    def sample(state, key, n: int = 64):
        return decode(state, jax.random.normal(key, (n, latent)))

    def encode_mean(state, images):
        return model.apply({"params": state.params}, images, method=model.encode)[0]

    def evaluate(state, source, key):
        from flaxgen import evaluation
        return evaluation.vae_metrics(model, eval_step, state, source, key, config)

    def pictures(state, source, key, outdir, step):
        from flaxgen import viz
        paths = viz.image_family_pictures(sample, reconstruct, state, source, key, outdir, step)
        if latent == 2:
            paths += viz.latent_pictures(decode, encode_mean, state, source, outdir, step)
        return paths

    def flops_per_example(train: bool = True):
        from flaxgen.flops import dense_mlp_flops, conv_vae_flops
        if config.model.arch == "dense":
            pixels = math.prod(info["image_shape"])
            widths = [pixels, *config.model.encoder_hidden]
            forward = dense_mlp_flops(widths) + 2 * 2 * widths[-1] * latent
            forward += dense_mlp_flops([latent, *config.model.decoder_hidden, pixels])
        else:
            forward = conv_vae_flops(tuple(info["image_shape"]), latent, config.model.conv_dense)
        return 3 * forward if train else forward

    return Family("vae", init, gradient_step(tx, loss_fn, config.optim), eval_step,
                  sample, evaluate, pictures, flops_per_example)
