"""The seeds' own framework as a peer: the Keras tutorials' models in Keras 3, trained as the
tutorials train them, on the same synthetic pixels and batch as `flaxgen bench`.

Each model runs on the Keras backend that trains it fastest on a 2-core CPU (issue 5's survey):
jax for the dense autoencoder, MLP VAE and dense GAN, TensorFlow for the conv VAE (its jax
backend manages a tenth of the speed), torch for the GPT recipe. Keras fixes its backend at
import, so every peer is a worker process (`python -m benchmarks.peers.keras_peers MODEL BATCH`)
that `flaxgen bench` drives over a pipe, a repeat at a time, interleaved with ours.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

PIXELS = 784
BACKENDS = {"autoencoder": "jax", "vae": "jax", "gan": "jax", "conv_vae": "tensorflow", "gpt_cpu": "torch"}


def make(model: str, batch: int, dtype: str = "float32", micro_batches: int = 1):
    """[(name, run)]: the Keras peer for this model, or none. Keras users train the batch whole,
    so micro_batches is not copied."""
    if model not in BACKENDS or dtype != "float32":
        return []
    import importlib.util

    for module in ("keras", BACKENDS[model]):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"the Keras peer of {model} needs {module} (pip install 'flaxgen[peers]')")
    from flaxgen.bench import PipedPeer

    # on a GPU our process already holds most of its memory: the worker's jax and TensorFlow
    # must allocate as they go instead of claiming a share up front
    env = dict(os.environ, KERAS_BACKEND=BACKENDS[model], TF_CPP_MIN_LOG_LEVEL="3",
               XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_FORCE_GPU_ALLOW_GROWTH="true")
    peer = PipedPeer([sys.executable, "-m", "benchmarks.peers.keras_peers", model, str(batch)], env=env)
    return [(peer.name, peer)]


# --- worker side: imports keras under the backend chosen above ---------------------------------

def _fit_clock(keras, keras_model, inputs, batch, targets=None):
    """run(steps) through `fit`, as the tutorials train (targets: the inputs, unless given; none
    for a model with its own train_step). Times from the end of the first step to the end of the
    last, so fit's per-call set-up (data adapter, callbacks) is not charged."""

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            self.stamps.append(time.perf_counter())

    clock = StepClock()

    def run(steps: int) -> float:
        clock.stamps = []
        rows = (steps + 1) * batch
        x = np.resize(inputs, (rows, *inputs.shape[1:]))
        y = np.resize(targets, (rows, *targets.shape[1:])) if targets is not None else x
        keras_model.fit(x, None if keras_model.loss is None else y, batch_size=batch, epochs=1, shuffle=False,
                        verbose=0, callbacks=[clock])
        return (clock.stamps[-1] - clock.stamps[0]) / steps
    return run


def _autoencoder(keras):
    inputs = keras.Input((PIXELS,))
    code = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(PIXELS, activation="sigmoid")(code)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def _sample_layer(keras):
    class Sample(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed = keras.random.SeedGenerator(0)

        def call(self, mean, log_var):
            eps = keras.random.normal(keras.ops.shape(mean), seed=self.seed)
            return mean + keras.ops.exp(0.5 * log_var) * eps
    return Sample()


def _vae(keras, hidden: int = 512, latent: int = 2):
    """784-512-2 encoder, 2-512-784 decoder; loss 784 * BCE + KL, as in the Keras example."""
    inputs = keras.Input((PIXELS,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    mean, log_var = keras.layers.Dense(latent)(h), keras.layers.Dense(latent)(h)
    z = _sample_layer(keras)(mean, log_var)
    recon = keras.layers.Dense(PIXELS, activation="sigmoid")(keras.layers.Dense(hidden, activation="relu")(z))
    model = keras.Model(inputs, keras.layers.Concatenate()([recon, mean, log_var]))

    def loss(x, packed):
        recon, mean, log_var = packed[:, :PIXELS], packed[:, PIXELS:PIXELS + latent], packed[:, PIXELS + latent:]
        bce = PIXELS * keras.losses.binary_crossentropy(x, recon)
        kl = -0.5 * keras.ops.sum(1 + log_var - mean**2 - keras.ops.exp(log_var), axis=-1)
        return bce + kl

    model.compile(optimizer="adam", loss=loss)
    return model


def _conv_vae(keras, latent: int = 2):
    """The Keras conv VAE example: its encoder, decoder and GradientTape train_step (TensorFlow)."""
    import tensorflow as tf

    layers, ops = keras.layers, keras.ops
    images = keras.Input((28, 28, 1))
    h = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(images)
    h = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(h)
    h = layers.Dense(16, activation="relu")(layers.Flatten()(h))
    mean, log_var = layers.Dense(latent)(h), layers.Dense(latent)(h)
    encoder = keras.Model(images, [mean, log_var, _sample_layer(keras)(mean, log_var)])
    codes = keras.Input((latent,))
    h = layers.Reshape((7, 7, 64))(layers.Dense(7 * 7 * 64, activation="relu")(codes))
    h = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(h)
    h = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(h)
    decoder = keras.Model(codes, layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(h))

    class VAE(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = encoder, decoder

        def train_step(self, data):
            with tf.GradientTape() as tape:
                mean, log_var, z = self.encoder(data)
                recon = self.decoder(z)
                recon_loss = ops.mean(ops.sum(keras.losses.binary_crossentropy(data, recon), axis=(1, 2)))
                kl = -0.5 * (1 + log_var - ops.square(mean) - ops.exp(log_var))
                loss = recon_loss + ops.mean(ops.sum(kl, axis=1))
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            return {"loss": loss}

    model = VAE()
    model.compile(optimizer=keras.optimizers.Adam())
    return model


def _gpt(keras, vocab: int = 65, block: int = 64, n_layer: int = 4, n_head: int = 4, d: int = 128):
    """The GPT CPU recipe's model in Keras layers: pre-norm blocks of causal MultiHeadAttention and
    a tanh-GELU MLP, AdamW (decay 0.1, b2 0.99) with the gradient clipped at norm 1. Keras users
    write the head as its own Dense (nanoGPT ties it to the embedding: 8k parameters of 0.8M)."""
    layers = keras.layers

    class Embed(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tokens, self.positions = layers.Embedding(vocab, d), layers.Embedding(block, d)

        def call(self, ids):
            return self.tokens(ids) + self.positions(keras.ops.arange(block))

    ids = keras.Input((block,), dtype="int32")
    h = Embed()(ids)
    for _ in range(n_layer):
        a = layers.LayerNormalization(epsilon=1e-5)(h)
        h = h + layers.MultiHeadAttention(n_head, d // n_head)(a, a, use_causal_mask=True)
        m = layers.Dense(4 * d, activation=lambda x: keras.activations.gelu(x, approximate=True))(
            layers.LayerNormalization(epsilon=1e-5)(h))
        h = h + layers.Dense(d)(m)
    logits = layers.Dense(vocab)(layers.LayerNormalization(epsilon=1e-5)(h))
    model = keras.Model(ids, logits)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.1, beta_2=0.99, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _gan_run(keras, pixels, batch, latent: int = 100):
    """The classic Keras GAN: D (784-256-512-1) on real + fake, then G (100-256-512-784) through
    the stacked model with D frozen. Keras 3 reads `trainable` at every call, hence the toggles."""
    dense = keras.layers.Dense
    g = keras.Sequential([keras.Input((latent,)), dense(256, activation="relu"), dense(512, activation="relu"),
                          dense(PIXELS, activation="sigmoid")])
    d = keras.Sequential([keras.Input((PIXELS,)), dense(256, activation="relu"), dense(512, activation="relu"),
                          dense(1)])

    def compile_(model):
        model.compile(keras.optimizers.Adam(2e-4, beta_1=0.5), keras.losses.BinaryCrossentropy(from_logits=True))

    compile_(d)
    d.trainable = False
    stacked = keras.Sequential([g, d])
    compile_(stacked)
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.ones((batch, 1)), np.zeros((batch, 1))]).astype(np.float32)
    ones = np.ones((batch, 1), np.float32)

    def run(steps: int) -> float:
        begin = time.perf_counter()
        for _ in range(steps):
            real = pixels[rng.integers(0, len(pixels), batch)]
            fake = g.predict_on_batch(rng.standard_normal((batch, latent), np.float32))
            d.trainable = True
            d.train_on_batch(np.concatenate([real, fake]), labels)
            d.trainable = False
            stacked.train_on_batch(rng.standard_normal((batch, latent), np.float32), ones)
        return (time.perf_counter() - begin) / steps   # train_on_batch returns host numbers: synced
    return run


def _worker(model: str, batch: int) -> None:
    from benchmarks.peers.worker import protocol_channel, serve

    channel = protocol_channel()
    os.environ.setdefault("KERAS_BACKEND", BACKENDS[model])
    import keras

    rng = np.random.default_rng(0)
    pixels = (rng.integers(0, 256, (4096, PIXELS)) / 255.0).astype(np.float32)
    if model == "gan":
        run = _gan_run(keras, pixels, batch)
    elif model == "gpt_cpu":
        windows = rng.integers(0, 65, (4096, 65)).astype(np.int32)
        run = _fit_clock(keras, _gpt(keras), windows[:, :-1], batch, targets=windows[:, 1:])
    elif model == "conv_vae":
        run = _fit_clock(keras, _conv_vae(keras), pixels.reshape(-1, 28, 28, 1), batch)
    else:
        run = _fit_clock(keras, {"autoencoder": _autoencoder, "vae": _vae}[model](keras), pixels, batch)
    run(2)  # compile
    how = "fit" if model != "gan" else "train_on_batch"
    serve(channel, f"keras {keras.__version__} ({keras.backend.backend()}) {how}", run)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
