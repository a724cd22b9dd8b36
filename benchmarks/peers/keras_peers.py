"""The seeds' own framework as a peer: the Keras tutorials' dense autoencoder and MLP VAE, in
Keras 3 on its jax backend (the fastest Keras backend for these two on a 2-core CPU), trained
with `fit` as the tutorials do, on the same synthetic pixels and batch as `flaxgen bench`.

`make(model, batch)` returns [(name, run)]; run(steps) trains that many steps and returns
seconds per step. Needs `pip install keras`; imports it with KERAS_BACKEND=jax unless set.
"""
from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402  (the backend is read at import)

PIXELS = 784


def _autoencoder() -> keras.Model:
    inputs = keras.Input((PIXELS,))
    code = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(PIXELS, activation="sigmoid")(code)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


class _Sample(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, mean, log_var):
        eps = keras.random.normal(keras.ops.shape(mean), seed=self.seed)
        return mean + keras.ops.exp(0.5 * log_var) * eps


def _vae(hidden: int = 512, latent: int = 2) -> keras.Model:
    """784-512-2 encoder, 2-512-784 decoder; loss 784 * BCE + KL, as in the Keras example."""
    inputs = keras.Input((PIXELS,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    mean, log_var = keras.layers.Dense(latent)(h), keras.layers.Dense(latent)(h)
    z = _Sample()(mean, log_var)
    recon = keras.layers.Dense(PIXELS, activation="sigmoid")(keras.layers.Dense(hidden, activation="relu")(z))
    model = keras.Model(inputs, keras.layers.Concatenate()([recon, mean, log_var]))

    def loss(x, packed):
        recon, mean, log_var = packed[:, :PIXELS], packed[:, PIXELS:PIXELS + latent], packed[:, PIXELS + latent:]
        bce = PIXELS * keras.losses.binary_crossentropy(x, recon)
        kl = -0.5 * keras.ops.sum(1 + log_var - mean**2 - keras.ops.exp(log_var), axis=-1)
        return bce + kl

    model.compile(optimizer="adam", loss=loss)
    return model


BUILDERS = {"autoencoder": _autoencoder, "vae": _vae}


def make(model: str, batch: int, dtype: str = "float32", micro_batches: int = 1):
    if model not in BUILDERS or dtype != "float32" or micro_batches != 1:
        return []
    keras_model = BUILDERS[model]()
    pixels = np.random.default_rng(0).integers(0, 256, (4096, PIXELS)).astype(np.float32) / 255.0

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            self.stamps.append(time.perf_counter())

    clock = StepClock()

    def run(steps: int) -> float:
        # Time from the end of the first step to the end of the last, so fit's per-call set-up
        # (data adapter, callbacks) is not charged to its steps.
        clock.stamps = []
        x = np.resize(pixels, ((steps + 1) * batch, PIXELS))
        keras_model.fit(x, x, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
        return (clock.stamps[-1] - clock.stamps[0]) / steps

    run(2)  # compile
    return [(f"keras {keras.__version__} ({keras.backend.backend()}) fit", run)]
