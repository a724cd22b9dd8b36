import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxgen.data import make_source
from flaxgen.models import make_family
from flaxgen.models.losses import bernoulli_nats
from flaxgen.models.vae import gaussian_kl
from flaxgen.training import rng
from flaxgen.training.state import norm_if_reported
from helpers import tiny_config, tree_equal


@pytest.mark.parametrize("kind", ["vae", "conv_vae", "autoencoder", "naive_bayes"])
def test_family_contract_steps_reduce_the_loss(kind, data_dir):
    config = tiny_config(kind, optim={"lr": 3e-3})
    source = make_source(config)
    family = make_family(config, source.info)
    batch = source.example_batch()
    state = jax.jit(family.init)(rng.stream(0, "init"), batch)
    step = jax.jit(family.train_step)
    losses = []
    for i in range(30):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert int(state.step) == 30
    if kind != "naive_bayes":   # counting on one repeated batch: loss is flat after step 1
        assert losses[-1] < losses[0] - 1.0
    metrics = jax.jit(family.eval_step)(state, batch, jax.random.key(0))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    samples = jax.jit(family.sample, static_argnums=2)(state, jax.random.key(1), 5)
    assert samples.shape == (5, 28, 28, 1)


def test_gaussian_kl_matches_monte_carlo():
    mean, logvar = jnp.array([[0.5, -1.0]]), jnp.array([[0.2, -0.7]])
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), (200_000, 2))
    log_q = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar), -1)
    log_p = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + z**2, -1)
    np.testing.assert_allclose(gaussian_kl(mean, logvar)[0], jnp.mean(log_q - log_p), rtol=2e-2)


def test_bernoulli_nats_is_the_negative_log_probability_and_stable():
    logits = jnp.array([[[[2.0]], [[-1.0]]], [[[80.0]], [[-80.0]]]])  # (2, 2, 1, 1)
    x = jnp.array([[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]])
    expected = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 - 1 / (1 + np.exp(1.0))))
    nats = bernoulli_nats(logits, x)
    np.testing.assert_allclose(nats[0], expected, rtol=1e-6)
    np.testing.assert_allclose(nats[1], 160.0, rtol=1e-6)   # no overflow at large |logit|
    # the gradient is sigmoid(logit) - x, as for optax's form
    grad = jax.grad(lambda l: bernoulli_nats(l, x).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(logits) - x, atol=1e-6)
    # the hand-written VJP agrees with autodiff of softplus(l) - l*x for both arguments, with
    # per-example weights on the way back
    key_l, key_x = jax.random.split(jax.random.key(0))
    logits, x = 4 * jax.random.normal(key_l, (3, 5, 5, 1)), jax.random.uniform(key_x, (3, 5, 5, 1))
    weights = jnp.array([1.0, -2.0, 0.5])
    plain = lambda l, t: ((jax.nn.softplus(l) - l * t).reshape(3, -1).sum(-1) * weights).sum()
    ours = lambda l, t: (bernoulli_nats(l, t) * weights).sum()
    for got, want in zip(jax.grad(ours, (0, 1))(logits, x), jax.grad(plain, (0, 1))(logits, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_naive_bayes_counts_and_exact_nll(data_dir):
    config = tiny_config("naive_bayes")
    source = make_source(config)
    family = make_family(config, source.info)
    batch = source.example_batch()
    state = family.init(rng.stream(0, "init"), batch)
    state, _ = family.train_step(state, batch, jax.random.key(0))
    state, _ = family.train_step(state, batch, jax.random.key(0))
    x = batch["image"].reshape(100, -1)
    np.testing.assert_allclose(np.asarray(state.params["ones"]).reshape(-1), 2 * x.sum(0))
    p = (2 * x.sum(0) + 1.0) / (200 + 2.0)
    expected = -(x @ np.log(p) + (1 - x) @ np.log1p(-p))
    got = family.eval_step(state, batch, jax.random.key(0))["nll"]
    np.testing.assert_allclose(got, expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("grad_clip", [None, 1e6])
def test_grad_norm_is_the_gradients_norm_and_skipped_only_when_not_reported(grad_clip, data_dir):
    # plain SGD with lr 1 makes the update the gradient itself: params - new params
    config = tiny_config("vae", optim={"name": "sgd", "lr": 1.0, "grad_clip": grad_clip})
    source = make_source(config)
    family = make_family(config, source.info)
    batch = source.example_batch()
    state = jax.jit(family.init)(rng.stream(0, "init"), batch)
    step = jax.jit(family.train_step)
    reported, reported_metrics = step(state, batch, jax.random.key(3), True)
    skipped, skipped_metrics = step(state, batch, jax.random.key(3), False)
    gradient = jax.tree.map(jnp.subtract, state.params, reported.params)
    expected = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(gradient)))
    assert expected > 0
    np.testing.assert_allclose(float(reported_metrics["grad_norm"]), expected, rtol=1e-4)
    # not reporting changes nothing but the metric, and a clipping optimizer has it anyway
    assert jax.tree.all(jax.tree.map(np.array_equal, reported.params, skipped.params))
    assert float(skipped_metrics["loss"]) == float(reported_metrics["loss"])
    if grad_clip or jax.default_backend() != "cpu":   # only CPU steps skip it (see the next test)
        assert float(skipped_metrics["grad_norm"]) == float(reported_metrics["grad_norm"])
    else:
        assert np.isnan(float(skipped_metrics["grad_norm"]))


def test_only_cpu_steps_branch_on_whether_the_norm_is_reported():
    # XLA:GPU waits on the host for every conditional's predicate: elsewhere `report` goes unread
    grads = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(5)}
    norm = jax.jit(norm_if_reported)
    report_arg = "%arg2"   # after the two gradient leaves
    for platform in ("cuda", "rocm", "tpu"):
        text = norm.trace(grads, True).lower(lowering_platforms=(platform,)).as_text()
        assert text.count(report_arg) == 1, platform   # the signature only
    assert norm.trace(grads, True).lower(lowering_platforms=("cpu",)).as_text().count(report_arg) > 1
    conditionals = norm.lower(grads, True).compile().as_text().count(" conditional(")
    assert conditionals == (2 if jax.default_backend() == "cpu" else 0)   # CPU: one per leaf


SMALL_IMAGES = {"name": "synthetic_images", "image_shape": [28, 28, 1], "num_examples": 64, "batch_size": 8}


@pytest.mark.parametrize("model, data", [
    ({"family": "autoencoder", "code_dim": 8}, SMALL_IMAGES),
    ({"family": "vae", "arch": "dense", "encoder_hidden": [32], "decoder_hidden": [32], "latent_dim": 4}, SMALL_IMAGES),
    ({"family": "vae", "arch": "conv", "latent_dim": 2, "conv_dense": 8}, SMALL_IMAGES),
    ({"family": "vae", "arch": "conv", "latent_dim": 2, "conv_dense": 8, "conv": "xla"}, SMALL_IMAGES),
    ({"family": "gan", "arch": "dense", "hidden": [16, 32], "latent_dim": 8}, SMALL_IMAGES),
    ({"family": "gan", "arch": "dcgan", "dcgan_width": 4, "latent_dim": 8, "r1_gamma": 1.0}, SMALL_IMAGES),
    ({"family": "gan", "arch": "mlp2d", "mlp_width": 16, "mlp_depth": 2, "latent_dim": 4},
     {"name": "ring8", "batch_size": 16}),
    # the tied head's backward too: jax's own would run it in float32
    ({"family": "transformer", "n_layer": 2, "n_head": 2, "d_model": 32},
     {"name": "synthetic_tokens", "block_size": 16, "vocab_size": 65, "num_examples": 1024, "batch_size": 4}),
], ids=["autoencoder", "vae", "conv_vae", "conv_vae_xla_convs", "gan", "dcgan", "gan_mlp2d", "gpt"])
def test_bfloat16_computes_in_bfloat16_and_keeps_the_function(model, data):
    from flaxgen.config import build_config

    families, lowered = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = build_config({"model": {**model, "dtype": dtype}, "data": data})
        source = make_source(config)
        families[dtype] = make_family(config, source.info)
    batch, key = next(source.eval_batches(data["batch_size"], 1)), jax.random.key(4)
    state = jax.jit(families["float32"].init)(rng.stream(0, "init"), batch)
    # the same float32 parameters whatever the compute dtype: checkpoints move between them
    assert tree_equal(state, jax.jit(families["bfloat16"].init)(rng.stream(0, "init"), batch))
    outcome = {}
    for dtype, family in families.items():
        step = jax.jit(family.train_step)
        lowered[dtype] = step.lower(state, batch, key).as_text()
        outcome[dtype] = step(state, batch, key)
    # every matmul and convolution reads bfloat16 operands, and none does in float32
    products = lambda text: [line for line in text.splitlines()
                             if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
    assert products(lowered["bfloat16"]) and all("bf16" in line for line in products(lowered["bfloat16"]))
    assert not any("bf16" in line for line in products(lowered["float32"]))
    (state32, metrics32), (state16, metrics16) = outcome["float32"], outcome["bfloat16"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state16.params))
    for name, value in metrics32.items():
        if np.isfinite(float(value)):   # grad_norm is NaN when a step skips it
            np.testing.assert_allclose(float(metrics16[name]), float(value), rtol=0.03, atol=0.03, err_msg=name)
    assert any(float(metrics16[name]) != float(value) for name, value in metrics32.items())  # it did run


@pytest.mark.parametrize("family", ["autoencoder", "vae", "gan"])
def test_an_unknown_compute_dtype_is_refused_in_one_line(family):
    from flaxgen.config import ConfigError, build_config

    config = build_config({"model": {"family": family, "dtype": "float16"}, "data": SMALL_IMAGES})
    with pytest.raises(ConfigError, match=r"^config key 'model.dtype' is 'float16'; use float32 or bfloat16$"):
        make_family(config, {"image_shape": (28, 28, 1)})
