"""Dense and convolution layers for every family: strided convolutions as 2-D matmuls, and one
2-D matmul whose weight gradient takes the layout XLA:CPU runs fastest.

XLA:CPU runs convolutions with dilated inputs (a strided transposed convolution, and the input
gradient of a strided convolution) on a very slow path, and small-channel convolutions well
below its matmul speed. `conv_gemm` and `conv_transpose_gemm` compute exactly the function of
`nn.Conv` / `nn.ConvTranspose` with 'SAME' padding and the same parameters (kernel HWIO, bias),
but every heavy operation they emit, forward and backward, is one 2-D matmul plus shifted
adds/slices. `Conv2D` runs either those or lax's convolutions (`model.conv`). `Dense` is nn.Dense
(same function, parameters and names) computed through `matmul`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


def matmul(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
    """x @ w, with its weight gradient xᵀ @ g in the layout XLA:CPU runs fastest.

    XLA:CPU runs xᵀ @ g (a dot contracting dimension 0 of both operands) on Eigen, at ~55
    GFLOP/s for a conv's im2col. Written as a plain matmul it runs on YNNPACK instead:
    - into a much narrower output: N <= K/4 from many rows (M >= 256: a conv's im2col, the GPT's
      MLP down-projection), or 2-16 columns at most half as wide as the input from any number
      of rows (a VAE's latent heads, the taps of a transposed convolution into 1 channel):
      (gᵀ @ x)ᵀ with gᵀ written out, 1.2-2x that op from many rows, 1.2-20x into 2-16 columns;
    - a few hundred rows into a wider output (256 <= M <= 512, N >= K: the GPT's other
      projections at its CPU micro-batch): xᵀ written out, then xᵀ @ g, 1.2-1.3x.
    A single output column (a critic's score) is a matrix-vector product, which jax's own rule
    runs fastest (the transposed form: 0.05-0.4x). Other shapes, where either form measured
    slower, and every other platform get jax's rule too (benchmarks/README.md, item 14)."""
    (M, K), N = x_MxK.shape, w_KxN.shape[1]
    if N == 1:
        return x_MxK @ w_KxN
    if (M >= 256 and 4 * N <= K) or (N <= 16 and 2 * N <= K):
        return _matmul(x_MxK, w_KxN, "transpose_gradient")
    if 256 <= M <= 512 and N >= K:
        return _matmul(x_MxK, w_KxN, "transpose_input")
    return x_MxK @ w_KxN


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _matmul(x_MxK, w_KxN, weight_gradient_form):
    return x_MxK @ w_KxN


def _matmul_jvp(weight_gradient_form, primals, tangents):
    """A custom JVP, not a VJP, so that forward mode keeps working: the tangent in w is written
    so that its transpose, the weight gradient, takes the chosen form. The barriers stop XLA from
    folding the transposes back into the dot."""
    x_MxK, w_KxN = primals
    dx_MxK, dw_KxN = tangents
    barrier = jax.lax.optimization_barrier
    terms = []
    if not isinstance(dx_MxK, SymbolicZero):
        terms.append(dx_MxK @ w_KxN)
    if not isinstance(dw_KxN, SymbolicZero):
        if weight_gradient_form == "transpose_gradient":
            cpu = lambda dw_KxN: barrier(barrier(dw_KxN.T) @ x_MxK.T).T    # transposed: bar(bar(gᵀ) @ x)ᵀ
        else:
            cpu = lambda dw_KxN: barrier(x_MxK.T).T @ dw_KxN               # transposed: bar(xᵀ) @ g
        terms.append(jax.lax.platform_dependent(dw_KxN, cpu=cpu, default=lambda dw_KxN: x_MxK @ dw_KxN))
    return x_MxK @ w_KxN, sum(terms[1:], terms[0])


_matmul.defjvp(_matmul_jvp, symbolic_zeros=True)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's contraction of the inputs' last axis with a 2-D kernel, through `matmul`."""
    if (precision is None and preferred_element_type is None and rhs.ndim == 2
            and dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ()))):
        return matmul(lhs.reshape(-1, lhs.shape[-1]), rhs).reshape(*lhs.shape[:-1], rhs.shape[1])
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)


class Dense(nn.Dense):
    """nn.Dense computed through `matmul`: the same function, parameters and parameter names."""

    dot_general: Any = _dense_dot_general


def _transpose_same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """Padding of the input-dilated convolution that lax.conv_transpose uses for 'SAME'."""
    pad_len = kernel + stride - 2
    pad_low = kernel - 1 if stride > kernel - 1 else int(np.ceil(pad_len / 2))
    return pad_low, pad_len - pad_low


def _shift(x: jax.Array, offset_h: int, offset_w: int, axes: tuple[int, int] = (1, 2)) -> jax.Array:
    """y[i, j] = x[i - offset_h, j - offset_w] over the two spatial `axes`, zero outside."""
    pads, cuts = [(0, 0)] * x.ndim, [slice(None)] * x.ndim
    for axis, offset in zip(axes, (offset_h, offset_w)):
        pads[axis] = (max(offset, 0), max(-offset, 0))
        cuts[axis] = slice(max(-offset, 0), max(-offset, 0) + x.shape[axis])
    return jnp.pad(x, pads)[tuple(cuts)]


def _output_phases(taps: list, kernel_hw: tuple[int, int], stride: int, axes: tuple[int, int]) -> dict:
    """col2im: {(ry, rx): sum of the taps' products that land in that output phase, each at its
    offset}, for lax.conv_transpose's 'SAME' padding; the spatial axes of the taps are `axes`."""
    (kh, kw), phases = kernel_hw, {}
    pad_h, pad_w = _transpose_same_padding(kh, stride)[0], _transpose_same_padding(kw, stride)[0]
    for ty in range(kh):
        qy, ry = divmod(pad_h - ty, stride)
        for tx in range(kw):
            qx, rx = divmod(pad_w - tx, stride)
            contribution = _shift(taps[ty * kw + tx], qy, qx, axes)
            phases[ry, rx] = phases[ry, rx] + contribution if (ry, rx) in phases else contribution
    return phases


def _stack_phases(phases: dict, stride: int, rx_axis: int, ry_axis: int) -> jax.Array:
    """The stride x stride output phases stacked on two new axes (rx's inside ry's), zeros for
    a phase no tap reaches (a stride larger than the kernel)."""
    zero = jnp.zeros_like(next(iter(phases.values())))
    return jnp.stack([jnp.stack([phases.get((ry, rx), zero) for rx in range(stride)], rx_axis)
                      for ry in range(stride)], ry_axis)


def conv_transpose_gemm(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """== lax.conv_transpose(x, kernel, (s, s), 'SAME'): x @ kernel for every tap at once, then
    each tap's product is added into its output phase at its offset (col2im)."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    if cout < 8:
        return _few_channel_conv_transpose(x, kernel, stride)
    # One 2-D matmul for all taps (XLA:CPU is slow on multi-axis contractions).
    wide = kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
    taps = matmul(x.reshape(n * h * w, cin), wide).reshape(n, h, w, kh * kw, cout)
    # split, not per-tap indexing: the gradient of a split is one concatenate, while each
    # index's gradient is a zero-padded copy of the whole tap array (taps^2 memory traffic).
    taps = [t[:, :, :, 0, :] for t in jnp.split(taps, kh * kw, axis=3)]
    phases = _output_phases(taps, (kh, kw), stride, axes=(1, 2))
    stacked = _stack_phases(phases, stride, rx_axis=3, ry_axis=3)    # (n, h, w, ry, rx, cout)
    return stacked.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * stride, w * stride, cout)


def _few_channel_conv_transpose(x, kernel, stride):
    """conv_transpose_gemm for outputs of few channels (an image's last layer), channel-major.

    Pixel-major, each tap's product is a column a few floats wide, and the col2im's shifted adds
    run over it at one float a step (item 8's 8-lane loops). Here the taps come out as rows,
    kernel @ xᵀ, so every shift and add walks whole image rows; the transposes fold into the dots."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    rows = kernel.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
    taps = (rows @ x.reshape(n * h * w, cin).T).reshape(kh * kw, cout, n, h, w)
    taps = [t[0] for t in jnp.split(taps, kh * kw, axis=0)]     # split: see conv_transpose_gemm
    phases = _output_phases(taps, (kh, kw), stride, axes=(2, 3))
    stacked = _stack_phases(phases, stride, rx_axis=-1, ry_axis=3)   # (cout, n, h, ry, w, rx)
    return stacked.reshape(cout, n, h * stride, w * stride).transpose(1, 2, 3, 0)


def conv_gemm(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """== lax.conv_general_dilated(x, kernel, (s, s), 'SAME'): the taps' slices side by side
    (im2col), then one matmul."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - w, 0)
    if stride > 1 and cin < 8:
        patches, kernel_rows = _space_to_depth_im2col(x, kernel, stride, (out_h, out_w), (pad_h // 2, pad_w // 2))
    else:
        x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
        patches = jnp.concatenate([x[:, ty:ty + span_h:stride, tx:tx + span_w:stride, :]
                                   for ty in range(kh) for tx in range(kw)], 3)  # (n, oh, ow, taps*cin)
        kernel_rows = kernel.reshape(kh * kw * cin, cout)
    # 2-D matmul: XLA:CPU is slow on multi-axis contractions
    out = matmul(patches.reshape(n * out_h * out_w, -1), kernel_rows)
    return out.reshape(n, out_h, out_w, cout)


def _space_to_depth_im2col(x, kernel, stride, out_hw, pad_low):
    """conv_gemm's patches for inputs of few channels, and the kernel's rows in their order.

    A strided slice per tap copies runs of `cin` floats, and XLA:CPU's loops are 8 lanes wide:
    a 1-channel image's 16 taps crawl. Space-to-depth first (each s x s block's pixels side by
    side), and the taps come as ceil(k/s)^2 unit-stride slices of s*s*cin-float runs."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    (out_h, out_w), s = out_hw, stride
    blocks_h, blocks_w = out_h - 1 + -(-kh // s), out_w - 1 + -(-kw // s)
    x = jnp.pad(x, ((0, 0), (pad_low[0], blocks_h * s - h - pad_low[0]),
                    (pad_low[1], blocks_w * s - w - pad_low[1]), (0, 0)))
    x_blocks = x.reshape(n, blocks_h, s, blocks_w, s, cin).transpose(0, 1, 3, 2, 4, 5)
    pieces, kernel_rows = [], []
    for a in range(-(-kh // s)):
        rows = min(s, kh - a * s)       # the taps a*s .. a*s + rows - 1 of the kernel's height
        for b in range(-(-kw // s)):
            cols = min(s, kw - b * s)
            piece = x_blocks[:, a:a + out_h, b:b + out_w, :rows, :cols, :]
            pieces.append(piece.reshape(n, out_h, out_w, rows * cols * cin))
            kernel_rows.append(kernel[a * s:a * s + rows, b * s:b * s + cols].reshape(rows * cols * cin, cout))
    return jnp.concatenate(pieces, 3), jnp.concatenate(kernel_rows, 0)


CONV_IMPLEMENTATIONS = ("auto", "gemm", "xla")


def conv_implementation(name: str) -> str:
    """`model.conv`: 'gemm' (the matmul formulations above), 'xla' (lax's convolutions, which
    XLA hands to cuDNN on GPUs), or 'auto': gemm on CPUs and GPUs, where they are faster (2-4x
    the training step on an H100, benchmarks/README.md), xla on TPUs, where nobody measured."""
    if name not in CONV_IMPLEMENTATIONS:
        from flaxgen.config import ConfigError
        raise ConfigError(f"config key 'model.conv' is {name!r}; use {', '.join(CONV_IMPLEMENTATIONS)}")
    if name == "auto":
        return "xla" if jax.default_backend() == "tpu" else "gemm"
    return name


def _lax_conv(x, kernel, stride: int, transpose: bool):
    """flax's nn.Conv / nn.ConvTranspose function ('SAME', NHWC, kernel HWIO)."""
    layout = ("NHWC", "HWIO", "NHWC")
    if transpose:
        return jax.lax.conv_transpose(x, kernel, (stride, stride), "SAME", dimension_numbers=layout)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=layout)


class Conv2D(nn.Module):
    """nn.Conv (or, with transpose=True, nn.ConvTranspose) with padding 'SAME': the same function
    and parameters, computed by the matmul formulations or by lax's convolutions."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (2, 2)
    transpose: bool = False
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32    # compute dtype, as nn.Conv's: the float32 parameters are cast to it
    implementation: str = "gemm"    # gemm | xla (see conv_implementation)

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.implementation == "gemm":
            y = (conv_transpose_gemm if self.transpose else conv_gemm)(x, kernel, self.strides[0])
        else:
            y = _lax_conv(x, kernel, self.strides[0], self.transpose)
        if self.use_bias:
            # Added in float32: the bias gradient sums over every output position (6,272 at 28x28,
            # batch 8), and a bfloat16 sum that long loses 10-90% of it.
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = (y.astype(jnp.float32) + bias).astype(self.dtype)
        return y


def conv_layers(implementation: str, dtype=jnp.float32):
    """(conv, conv_transpose) constructors taking (features, kernel_size, strides)."""
    conv = lambda features, kernel_size, strides: Conv2D(
        features, kernel_size, strides, dtype=dtype, implementation=implementation)
    conv_transpose = lambda features, kernel_size, strides: Conv2D(
        features, kernel_size, strides, transpose=True, dtype=dtype, implementation=implementation)
    return conv, conv_transpose
