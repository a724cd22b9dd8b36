import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxgen.models.layers import Conv2D, conv_gemm, conv_transpose_gemm


@pytest.mark.usefixtures("full_float32_matmuls")
@pytest.mark.parametrize("size, cin, cout, kernel, stride", [
    (7, 64, 64, 3, 2), (14, 8, 4, 3, 2), (28, 4, 1, 3, 1), (5, 3, 4, 4, 2), (6, 3, 2, 5, 2), (9, 2, 3, 3, 3),
    (28, 1, 8, 4, 2), (7, 1, 3, 3, 2), (8, 2, 3, 1, 2), (10, 1, 2, 2, 3), (6, 5, 7, 3, 1), (5, 3, 8, 2, 1),
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


@pytest.mark.parametrize("cin, strided_slices", [(1, 0), (7, 0), (8, 16)])
def test_the_im2col_of_few_channels_takes_unit_stride_slices_of_space_to_depth_blocks(cin, strided_slices):
    x, kernel = jnp.ones((2, 14, 14, cin)), jnp.ones((4, 4, cin, 8))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv_gemm(x, kernel, 2))))(x)
    slices = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "slice"]
    assert len([e for e in slices if e.params["strides"] and max(e.params["strides"]) > 1]) == strided_slices
    # space to depth: 4 slices of the blocks (and 4 of the kernel's rows); else one per tap
    assert len(slices) == (8 if strided_slices == 0 else 16)


@pytest.mark.parametrize("cout, tap_rows", [(1, True), (7, True), (8, False)])
def test_transposed_convolutions_into_few_channels_compute_their_taps_channel_major(cout, tap_rows):
    x, kernel = jnp.ones((2, 14, 14, 32)), jnp.ones((3, 3, 32, cout))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv_transpose_gemm(x, kernel, 2))))(x)
    forward = [e.outvars[0].aval.shape for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"][0]
    # one product for all taps: (taps x channels) rows of pixels, or a pixel's taps side by side
    assert forward == ((9 * cout, 2 * 14 * 14) if tap_rows else (2 * 14 * 14, 9 * cout))


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


@pytest.mark.usefixtures("full_float32_matmuls")
@pytest.mark.parametrize("rows, inner, outer", [(300, 256, 32), (300, 32, 256), (1000, 32, 256), (64, 256, 32),
                                               (128, 512, 2), (300, 256, 1), (400, 32, 9)])
def test_matmul_is_x_at_w_in_value_gradients_forward_mode_and_second_order(rows, inner, outer):
    from flaxgen.models.layers import matmul

    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (rows, inner))
    w = 0.05 * jax.random.normal(kw, (inner, outer))
    loss = lambda mm: lambda x, w: jnp.sum(jnp.tanh(mm(x, w)))
    # R1's shape of second order: the gradient of a penalty on the input gradient
    penalty = lambda mm: lambda w: jnp.sum(jax.grad(loss(mm))(x, w) ** 2)
    checks = [lambda mm: mm(x, w),
              lambda mm: jax.grad(loss(mm), (0, 1))(x, w),
              lambda mm: jax.jvp(lambda w: mm(x, w), (w,), (jnp.ones_like(w),))[1],
              lambda mm: jax.grad(penalty(mm))(w)]
    for check in checks:
        for got, expected in zip(jax.tree.leaves(jax.jit(lambda: check(matmul))()),
                                 jax.tree.leaves(check(jnp.matmul))):
            # float32 sums in another order: differences at the scale of the largest entry
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("rows, inner, outer", [(512, 256, 32), (384, 128, 512), (128, 512, 2), (3136, 32, 16)])
def test_matmuls_weight_gradient_is_a_plain_matmul_on_cpu_and_jaxs_dot_elsewhere(rows, inner, outer):
    from flaxgen.models.layers import matmul

    x, w = jnp.ones((rows, inner)), jnp.ones((inner, outer))
    weight_gradient = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(matmul(x, w)))))
    # XLA:CPU runs a dot contracting dimension 0 of both operands on its slow path
    compiled = weight_gradient.lower(w).compile().as_text()
    assert "lhs_contracting_dims={0}" not in compiled
    plain = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(x @ w)))).lower(w).compile().as_text()
    assert "lhs_contracting_dims={0}" in plain     # what the check catches
    gpu = weight_gradient.trace(w).lower(lowering_platforms=("cuda",)).as_text()
    assert "contracting_dims = [0] x [0]" in gpu and "optimization_barrier" not in gpu


def test_a_single_output_columns_weight_gradient_keeps_jaxs_rule():
    from flaxgen.models.layers import matmul

    # a matrix-vector product: XLA:CPU's own form is the fastest one (the transposed: 0.05-0.4x)
    x, w = jnp.ones((512, 256)), jnp.ones((256, 1))
    lowered = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(matmul(x, w))))).lower(w).as_text()
    assert "optimization_barrier" not in lowered and "dot_general" in lowered
    wider = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(matmul(x, w))))).lower(jnp.ones((256, 2))).as_text()
    assert "optimization_barrier" in wider      # what the check catches


def test_matmul_computes_no_product_for_an_operand_not_differentiated():
    from flaxgen.models.layers import matmul

    x, w = jnp.ones((512, 256)), jnp.ones((256, 32))
    # Forward mode in x alone: the value and its tangent, two products. A zero tangent for w
    # made concrete would add a third (zeros times x, kept by the barriers).
    jvp = jax.jit(lambda x, dx: jax.jvp(lambda x: matmul(x, w), (x,), (dx,)))
    assert jvp.lower(x, x).compile().as_text().count(" dot(") == 2


def test_dense_is_flaxs_dense_with_the_same_parameters():
    from flaxgen.models.layers import Dense

    x = jax.random.normal(jax.random.key(0), (300, 4, 256))
    ours, reference = Dense(32), nn.Dense(32)
    params = reference.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_array_equal(ours.init(jax.random.key(1), x)["params"]["kernel"], params["params"]["kernel"])
    params = {"params": {**params["params"], "bias": jax.random.normal(jax.random.key(2), (32,))}}
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)
        grads = [jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x))))(params)["params"] for m in (ours, reference)]
    # Each gradient is a float32 sum over 1,200 rows, whose rounding depends on the CPU's kernels
    # (flax's own is ~7e-5 off the exact value here): judge both against float64, relative to the
    # sum of the terms' magnitudes. A wrong formula misses by orders of magnitude more.
    x_64 = np.asarray(x, np.float64).reshape(-1, 256)
    kernel_64, bias_64 = (np.asarray(params["params"][name], np.float64) for name in ("kernel", "bias"))
    cos_64 = np.cos(x_64 @ kernel_64 + bias_64)
    exact = {"kernel": x_64.T @ cos_64, "bias": cos_64.sum(0)}
    magnitude = {"kernel": np.abs(x_64).T @ np.abs(cos_64), "bias": np.abs(cos_64).sum(0)}
    for grad in grads:
        for name in exact:
            error = np.abs(np.asarray(grad[name], np.float64) - exact[name])
            assert np.all(error <= 1e-6 * magnitude[name]), (name, float(np.max(error / magnitude[name])))
