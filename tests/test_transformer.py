import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxgen.config import build_config
from flaxgen.models.transformer import build_model, empty_cache, filter_logits, make, pad_vocab

INFO = {"vocab_size": 65, "block_size": 16}


def _config(**model):
    return build_config({"model": {"family": "transformer", "n_layer": 2, "n_head": 2, "d_model": 32, **model},
                         "data": {"name": "synthetic_tokens", "block_size": 16, "vocab_size": 65, "batch_size": 4}})


def _params(model, key=0):
    return model.init(jax.random.key(key), jnp.zeros((1, 16), jnp.int32))["params"]


@pytest.mark.usefixtures("full_float32_matmuls")
@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_gives_the_full_forward_logits(positions, scan_layers):
    model = build_model(_config(positions=positions, scan_layers=scan_layers), INFO)
    params = _params(model)
    tokens = jax.random.randint(jax.random.key(1), (3, 16), 0, 65)
    apply = jax.jit(model.apply)
    full, _ = apply({"params": params}, tokens)
    # prefill 5 tokens, then one token at a time
    positions_prefill = jnp.broadcast_to(jnp.arange(5), (3, 5))
    logits, cache = apply({"params": params}, tokens[:, :5], positions_prefill, empty_cache(model, 3))
    steps = [logits]
    for pos in range(5, 16):
        logits, cache = apply({"params": params}, tokens[:, pos:pos + 1], jnp.full((3, 1), pos), cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_sampling_past_the_context_sees_the_cropped_window(positions):
    """Greedy decoding beyond block_size must pick, at every step, the argmax of a plain forward
    pass over the last block_size tokens."""
    config = _config(positions=positions)
    family = make(config, INFO)
    model = build_model(config, INFO)
    state = jax.jit(family.init)(jax.random.key(0), {"inputs": jnp.zeros((4, 16), jnp.int32)})
    text = family.sample(state, jax.random.key(0), n=1, prompt="3 1 4", max_new_tokens=30, temperature=0.0)[0]
    tokens = [int(t) for t in text.split()]
    assert len(tokens) == 33
    # inside the context the cached-decoding test covers it; here every full window past it
    windows = jnp.asarray([tokens[end - 16:end] for end in range(16, 33)])
    logits = jax.jit(model.apply)({"params": state.params}, windows)[0][:, -1, :65]
    np.testing.assert_array_equal(jnp.argmax(logits, -1), tokens[16:33])


def test_vocabulary_is_padded_and_padding_is_never_sampled():
    assert pad_vocab(65) == 128 and pad_vocab(50257) == 50304 and pad_vocab(64) == 64
    config = _config()
    family = make(config, INFO)
    state = jax.jit(family.init)(jax.random.key(0), {"inputs": jnp.zeros((4, 16), jnp.int32)})
    texts = family.sample(state, jax.random.key(0), n=4, prompt="1 2 3", max_new_tokens=40, temperature=2.0)
    tokens = [int(t) for text in texts for t in text.split()]
    assert len(texts) == 4 and max(tokens) < 65 and len(texts[0].split()) == 43


def test_sampling_is_deterministic_greedy_at_zero_and_stops():
    family = make(_config(), INFO)
    state = jax.jit(family.init)(jax.random.key(0), {"inputs": jnp.zeros((4, 16), jnp.int32)})
    draw = lambda seed, **kw: family.sample(state, jax.random.key(seed), n=3, prompt="5", max_new_tokens=30, **kw)
    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    greedy = draw(0, temperature=0.0)
    assert greedy == draw(1, temperature=0.0) and len(set(greedy)) == 1
    assert draw(5, top_k=1) == greedy   # top-k 1 is greedy whatever the key
    stop_token = greedy[0].split()[3]
    stopped = draw(0, temperature=0.0, stop=stop_token)
    assert all(s.split()[-1] == stop_token and len(s.split()) <= 4 for s in stopped)


def test_prompt_longer_than_the_context_is_a_clear_error():
    family = make(_config(), INFO)
    state = jax.jit(family.init)(jax.random.key(0), {"inputs": jnp.zeros((4, 16), jnp.int32)})
    with pytest.raises(ValueError, match="the prompt is 20 tokens but the model's context is 16"):
        family.sample(state, jax.random.key(0), prompt=" ".join(["1"] * 20))


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = jnp.isfinite(filter_logits(logits, 1.0, None, 0.7))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = jnp.isfinite(filter_logits(logits, 1.0, None, 0.5))
    np.testing.assert_array_equal(kept, [[True, False, False, False]])
    kept = jnp.isfinite(filter_logits(logits, 1.0, 3, None))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_remat_and_bf16_keep_the_function():
    base = build_model(_config(), INFO)
    params = _params(base)
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, 65)
    loss = lambda model: jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(model.apply({"params": p}, tokens)[0] ** 2)))(params)
    (value, grads), (value_remat, grads_remat) = loss(base), loss(build_model(_config(remat=True), INFO))
    np.testing.assert_allclose(value_remat, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
        np.testing.assert_allclose(b, a, atol=1e-6)
    bf16 = build_model(_config(dtype="bfloat16"), INFO)
    logits = jax.jit(bf16.apply)({"params": params}, tokens)[0]
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, jax.jit(base.apply)({"params": params}, tokens)[0], atol=0.1)


def test_gpt2_init_scales_residual_projections():
    model = build_model(_config(n_layer=8, d_model=64), INFO)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    block = params["blocks_0"]
    assert abs(float(jnp.std(block["Dense_0"]["kernel"])) - 0.02) < 0.003
    assert abs(float(jnp.std(block["Dense_1"]["kernel"])) - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)


@pytest.mark.usefixtures("full_float32_matmuls")
def test_einsum_attention_matches_jax_dot_product_attention_values_and_grads():
    from flaxgen.models.transformer import einsum_causal_attention

    q, k, v = (jax.random.normal(key, (3, 10, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
    reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    np.testing.assert_allclose(einsum_causal_attention(q, k, v), reference(q, k, v), atol=1e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * jnp.cos(v))
    ours = jax.grad(loss(einsum_causal_attention), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the first query sees only the first key: its output is exactly v[:, 0]
    np.testing.assert_allclose(einsum_causal_attention(q, k, v)[:, 0], v[:, 0], atol=1e-6)


@pytest.mark.parametrize("backend, dtype, cudnn_accepts, expected", [
    ("cpu", jnp.bfloat16, True, ["einsum"]),
    ("gpu", jnp.bfloat16, True, ["cudnn"]),
    ("gpu", jnp.bfloat16, False, ["cudnn", "xla"]),  # jax's checks refuse the shape: XLA's form
    ("gpu", jnp.float32, True, ["xla"]),            # cuDNN's flash attention is 16-bit only
    ("tpu", jnp.bfloat16, True, ["xla"]),
])
def test_auto_attention_asks_for_cudnn_on_gpus_for_16_bit_inputs(monkeypatch, backend, dtype,
                                                                   cudnn_accepts, expected):
    from flaxgen.models import transformer

    asked = []

    def fake_attention(q, k, v, is_causal, implementation):
        asked.append(implementation)
        if implementation == "cudnn" and not cudnn_accepts:
            raise NotImplementedError("The head dim must be <= 128 and a multiple of 8")
        return v

    def fake_einsum(q, k, v):
        asked.append("einsum")
        return v

    monkeypatch.setattr(transformer.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(transformer.jax.nn, "dot_product_attention", fake_attention)
    monkeypatch.setattr(transformer, "einsum_causal_attention", fake_einsum)
    q = jnp.zeros((1, 4, 2, 8), dtype)
    transformer.causal_attention(q, q, q, None)
    assert asked == expected
    asked.clear()
    transformer.causal_attention(q, q, q, "xla")  # an explicit choice is kept on every backend
    assert asked == ["xla"]


def test_low_precision_cross_entropy_is_optaxs_on_the_same_logits_with_a_16_bit_gradient():
    from flaxgen.models.transformer import low_precision_cross_entropy

    logits_key, targets_key, weights_key = jax.random.split(jax.random.key(7), 3)
    logits = (4 * jax.random.normal(logits_key, (96, 320))).astype(jnp.bfloat16)
    targets = jax.random.randint(targets_key, (96,), 0, 320)
    weights = jax.random.uniform(weights_key, (96,))   # a cotangent that is not all ones

    def ours(l):
        return (weights * low_precision_cross_entropy(l, targets)).sum()

    def reference(l):   # optax in float32 on the same (bfloat16-valued) logits
        return (weights * optax.softmax_cross_entropy_with_integer_labels(l.astype(jnp.float32), targets)).sum()

    value, grad = jax.value_and_grad(ours)(logits)
    ref_value, ref_grad = jax.value_and_grad(reference)(logits)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    # the gradient differs from float32's by its rounding to bfloat16 alone
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, rtol=2**-8, atol=1e-6)
    assert np.abs(np.asarray(grad, np.float32) - ref_grad).max() > 0   # it is 16-bit
