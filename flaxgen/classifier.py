"""A small MNIST-style classifier whose penultimate features score generated images (an MNIST
analogue of FID) and whose predictions give the class histogram of samples."""
from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxgen.models.layers import Dense
from flaxgen.training import rng


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x, features: bool = False):
        h = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
        h = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(h))
        h = nn.relu(Dense(128)(h.reshape(h.shape[0], -1)))
        return h if features else Dense(10)(h)


def _cache_file(name: str) -> Path:
    root = Path(os.path.expanduser(os.environ.get("FLAXGEN_CACHE_DIR", "~/.cache/flaxgen")))
    return root / f"classifier-{name}.npz"


def train_classifier(images, labels, test_images, test_labels, *, epochs: int = 3, seed: int = 0):
    model = Classifier()
    key = rng.stream(seed, "init")
    params = model.init(key, jnp.zeros((1, *images.shape[1:])))["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    batch = 128
    data_key = rng.stream(seed, "data")
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(labels)))
        for i in range(len(labels) // batch):
            chosen = order[i * batch:(i + 1) * batch]
            params, opt_state = step(params, opt_state, images[chosen], labels[chosen])
    accuracy = float(np.mean(predict(params, test_images) == test_labels))
    return params, accuracy


def predict(params, images, with_features: bool = False):
    model = Classifier()
    logits_fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    features_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, features=True))
    preds, feats = [], []
    for i in range(0, len(images), 1000):
        chunk = jnp.asarray(images[i:i + 1000])
        preds.append(np.asarray(jnp.argmax(logits_fn(params, chunk), -1)))
        if with_features:
            feats.append(np.asarray(features_fn(params, chunk), np.float64))
    preds = np.concatenate(preds)
    return (preds, np.concatenate(feats)) if with_features else preds


def load_or_train(source, name: str):
    """(params, test accuracy), trained once per dataset and cached."""
    path = _cache_file(name)
    template = Classifier().init(jax.random.key(0), jnp.zeros((1, *source.info["image_shape"])))["params"]
    leaves, treedef = jax.tree.flatten(template)
    if path.is_file():
        with np.load(path) as stored:
            params = jax.tree.unflatten(treedef, [stored[f"p{i}"] for i in range(len(leaves))])
            return params, float(stored["accuracy"])
    images = source.arrays["images"].astype(np.float32) / 255.0
    test_images = source.eval_images.astype(np.float32) / 255.0
    params, accuracy = train_classifier(images, source.arrays["labels"], test_images, source.eval_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, accuracy=accuracy, **{f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))})
    os.replace(tmp, path)
    return params, accuracy
