"""Dense autoencoder (the Keras tutorial's): 784 -> Dense(32, relu) -> Dense(784, sigmoid), BCE."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxgen.models import Family, compute_dtype
from flaxgen.models.layers import Dense
from flaxgen.models.losses import bernoulli_nats
from flaxgen.training.state import TrainState, gradient_step, make_optimizer


def defaults() -> dict:
    return {"model": {"family": "autoencoder", "code_dim": 32,
                      "dtype": "float32"}}   # compute dtype: float32 | bfloat16


class Autoencoder(nn.Module):
    code_dim: int
    image_shape: tuple
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.encoder = Dense(self.code_dim, dtype=self.dtype)
        self.decoder = Dense(math.prod(self.image_shape), dtype=self.dtype)

    def encode(self, x_BxHxWxC):
        return nn.relu(self.encoder(x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)))

    def decode_logits(self, code_BxK):
        # float32 logits: the loss and the sigmoid are computed at full precision
        logits = self.decoder(code_BxK).astype(jnp.float32)
        return logits.reshape(code_BxK.shape[0], *self.image_shape)

    def __call__(self, x_BxHxWxC):
        return self.decode_logits(self.encode(x_BxHxWxC))


def make(config, info) -> Family:
    model = Autoencoder(config.model.code_dim, tuple(info["image_shape"]), compute_dtype(config.model))
    tx = make_optimizer(config.optim, config.train.steps)

    def init(key, batch):
        params = model.init(key, batch["image"])["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))

    def loss_fn(params, batch, key, indices):
        nats = bernoulli_nats(model.apply({"params": params}, batch["image"]), batch["image"])
        return nats.mean(), {}

    def eval_step(state, batch, key):
        return {"recon_nats": loss_fn(state.params, batch, key, None)[0]}

    def reconstruct(state, images):
        return jax.nn.sigmoid(model.apply({"params": state.params}, images))

    def sample(state, key, n: int = 64):
        # An autoencoder has no prior; decoding random non-negative codes shows what its code
        # space holds, which is why the VAE exists.
        codes = jnp.abs(jax.random.normal(key, (n, config.model.code_dim)))
        return jax.nn.sigmoid(model.apply({"params": state.params}, codes, method=model.decode_logits))

    def evaluate(state, source, key):
        from flaxgen.evaluation import mean_over_batches
        return mean_over_batches(jax.jit(eval_step), state, source, key, config)

    def pictures(state, source, key, outdir, step):
        from flaxgen import viz
        return viz.image_family_pictures(sample, reconstruct, state, source, key, outdir, step)

    pixels = math.prod(info["image_shape"])

    def flops_per_example(train: bool = True):
        forward = 2 * (pixels * config.model.code_dim * 2)
        return 3 * forward if train else forward

    return Family("autoencoder", init, gradient_step(tx, loss_fn, config.optim),
                  eval_step, sample, evaluate, pictures, flops_per_example)
