"""Test metrics: ELBO and importance-weighted NLL (VAEs), NLL (naive Bayes), reconstruction
(autoencoder), mode coverage (2-D GANs), classifier-based scores (image GANs), LM loss."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def mean_over_batches(eval_fn, state, source, key, config, max_batches=None) -> dict:
    """Mean of per-batch metrics over the eval set (batches are equal-sized)."""
    totals, count = {}, 0
    limit = max_batches if max_batches is not None else config.eval.batches
    for i, batch in enumerate(source.eval_batches(config.data.eval_batch_size, limit)):
        metrics = jax.device_get(eval_fn(state, batch, jax.random.fold_in(key, i)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        count += 1
    return {name: total / count for name, total in totals.items()}


def _log_normal(z, mean, logvar):
    return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar), -1)


def make_iw_log_weights(model, num_samples: int, chunk: int):
    """log p(x, z_k) - log q(z_k | x) for k samples, in chunks so memory stays bounded."""
    from flaxgen.models.losses import bernoulli_nats

    if num_samples % chunk:
        chunk = math.gcd(num_samples, chunk)

    def log_weights(params, x, key):
        mean, logvar = model.apply({"params": params}, x, method=model.encode)

        def one_chunk(chunk_key):
            eps = jax.random.normal(chunk_key, (chunk, *mean.shape))
            z = mean + jnp.exp(0.5 * logvar) * eps                  # (chunk, B, Z)
            logits = model.apply({"params": params}, z.reshape(-1, z.shape[-1]), method=model.decode)
            x_rep = jnp.broadcast_to(x, (chunk, *x.shape)).reshape(-1, *x.shape[1:])
            log_lik = -bernoulli_nats(logits, x_rep).reshape(chunk, -1)
            log_prior = _log_normal(z, 0.0, jnp.zeros_like(z))
            return log_lik + log_prior - _log_normal(z, mean, logvar)

        keys = jax.random.split(key, num_samples // chunk)
        return jax.lax.map(one_chunk, keys).reshape(num_samples, x.shape[0])

    return log_weights


def vae_metrics(model, eval_step, state, source, key, config) -> dict:
    """Test negative ELBO (nats) and the importance-weighted NLL estimate with k samples."""
    elbo = mean_over_batches(jax.jit(eval_step), state, source, key, config)
    k = config.eval.iw_samples
    log_weights = jax.jit(make_iw_log_weights(model, k, config.eval.iw_batch))
    nll_sum, count = 0.0, 0
    # Fewer examples per call than training batches: each is decoded k times.
    examples_per_call = max(1, min(config.data.eval_batch_size, 50_000 // config.eval.iw_batch))
    for i, batch in enumerate(source.eval_batches(examples_per_call, _iw_batches(source, config, examples_per_call))):
        lw = log_weights(state.params, jnp.asarray(batch["image"]), jax.random.fold_in(key, 10_000 + i))
        nll = -(jax.nn.logsumexp(lw, axis=0) - math.log(k))
        nll_sum += float(nll.sum())
        count += nll.shape[0]
    return {**elbo, "iw_nll": nll_sum / count, "iw_samples": k, "iw_examples": count}


def _iw_batches(source, config, per_call):
    if config.eval.batches is None:
        return None
    return max(1, config.eval.batches * config.data.eval_batch_size // per_call)


# --- 2-D mixtures -----------------------------------------------------------------------------

def mode_coverage(samples: np.ndarray, centers: np.ndarray, std: float) -> dict:
    """High quality: within 3 std of the nearest centre. Covered: a mode receives at least a
    quarter of its expected share of high-quality samples. KL: mode histogram vs uniform."""
    samples = np.asarray(samples, np.float64)
    distances = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=-1)
    nearest = distances.argmin(1)
    good = distances[np.arange(len(samples)), nearest] <= 3 * std
    counts = np.bincount(nearest[good], minlength=len(centers)).astype(np.float64)
    expected = len(samples) / len(centers)
    covered = int((counts >= expected / 4).sum())
    hist = counts / max(counts.sum(), 1.0)
    uniform = 1.0 / len(centers)
    kl = float(np.sum(np.where(hist > 0, hist * np.log(np.maximum(hist, 1e-12) / uniform), 0.0)))
    return {"modes_covered": covered, "num_modes": len(centers),
            "high_quality_pct": 100.0 * float(good.mean()), "mode_kl": kl}


# --- image classifiers for GAN scores -----------------------------------------------------------

def class_histogram_kl(predicted: np.ndarray, num_classes: int) -> tuple[int, float]:
    counts = np.bincount(predicted, minlength=num_classes).astype(np.float64)
    hist = counts / counts.sum()
    kl = float(np.sum(np.where(hist > 0, hist * np.log(np.maximum(hist, 1e-12) * num_classes), 0.0)))
    return int((counts > 0).sum()), kl


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as FID does)."""
    import scipy.linalg

    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def gan_metrics(sample, state, source, key, config) -> dict:
    """2-D mixtures: mode coverage of 2,500 samples. Images: classifier scores of 10,000 samples."""
    if "centers" in source.info:
        points = np.asarray(jax.jit(sample, static_argnums=2)(state, key, 2500))
        return mode_coverage(points, np.asarray(source.info["centers"]), source.info["std"])
    from flaxgen import classifier

    params, accuracy = classifier.load_or_train(source, config.data.name)
    draw = jax.jit(sample, static_argnums=2)
    generated = np.concatenate([np.asarray(draw(state, jax.random.fold_in(key, i), 1000)) for i in range(10)])
    predicted, fake_features = classifier.predict(params, generated, with_features=True)
    real = source.eval_images.astype(np.float32) / 255.0
    _, real_features = classifier.predict(params, real, with_features=True)
    present, kl = class_histogram_kl(predicted, 10)
    return {"classifier_test_accuracy": accuracy, "classes_present": present,
            "class_kl_to_uniform": kl, "frechet_classifier_distance": frechet_distance(real_features, fake_features)}
