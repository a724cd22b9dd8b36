import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxgen.models.layers import Conv2D


@pytest.mark.usefixtures("full_float32_matmuls")
@pytest.mark.parametrize("size, cin, cout, kernel, stride", [
    (7, 64, 64, 3, 2), (14, 8, 4, 3, 2), (28, 4, 1, 3, 1), (5, 3, 4, 4, 2), (6, 3, 2, 5, 2), (9, 2, 3, 3, 3),
])
@pytest.mark.parametrize("implementation", ["gemm", "xla"])
def test_conv_layers_compute_flax_functions_and_gradients(size, cin, cout, kernel, stride, implementation):
    key = jax.random.key(0)
    x = jax.random.normal(key, (2, size, size, cin))
    shape = dict(features=cout, kernel_size=(kernel, kernel), strides=(stride, stride))
    pairs = [(nn.ConvTranspose(**shape, padding="SAME"), Conv2D(**shape, transpose=True, implementation=implementation)),
             (nn.Conv(**shape, padding="SAME"), Conv2D(**shape, implementation=implementation))]
    for reference, ours in pairs:
        params = reference.init(jax.random.key(1), x)
        params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape), params)  # nonzero bias
        expected, got = jax.jit(reference.apply)(params, x), jax.jit(ours.apply)(params, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
        loss = lambda module: jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), (0, 1)))
        grads_expected, grads_got = loss(reference)(params, x), loss(ours)(params, x)
        for a, b in zip(jax.tree.leaves(grads_expected), jax.tree.leaves(grads_got)):
            np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["gemm", "xla"])
@pytest.mark.parametrize("transpose", [False, True])
def test_bfloat16_conv_layers_keep_their_gradients(transpose, implementation):
    # Every output position adds to the bias gradient: 6,272 same-sign terms here, which a
    # bfloat16 sum gets ~8% wrong; the layer must sum them in float32.
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 4))
    grads = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        layer = Conv2D(4, (3, 3), (1, 1), transpose=transpose, dtype=dtype, implementation=implementation)
        params = layer.init(jax.random.key(1), x)
        loss = lambda p, x: jnp.sum(layer.apply(p, x).astype(jnp.float32) * 0.01)
        assert layer.apply(params, x).dtype == dtype
        grads[dtype] = jax.jit(jax.grad(loss, (0, 1)))(params, x)
    np.testing.assert_allclose(grads[jnp.float32][0]["params"]["bias"], 0.01 * 8 * 28 * 28, rtol=1e-5)
    for exact, approx in zip(jax.tree.leaves(grads[jnp.float32]), jax.tree.leaves(grads[jnp.bfloat16])):
        np.testing.assert_allclose(np.asarray(approx, np.float32), exact, rtol=0.01, atol=1e-3)


def test_auto_convolutions_are_the_matmul_forms_on_cpus_and_gpus(monkeypatch):
    from flaxgen.config import ConfigError
    from flaxgen.models import layers

    assert layers.conv_implementation("auto") == "gemm"     # these tests run on CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.conv_implementation("auto") == "gemm"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert layers.conv_implementation("auto") == "xla"
    assert layers.conv_implementation("gemm") == "gemm"
    with pytest.raises(ConfigError, match="^config key 'model.conv' is 'cudnn'; use auto, gemm, xla$"):
        layers.conv_implementation("cudnn")
