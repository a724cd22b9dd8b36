"""Analytic FLOPs, device peaks and MFU. A multiply-add counts as 2 FLOPs."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def dense_mlp_flops(widths) -> float:
    return float(sum(2 * a * b for a, b in zip(widths[:-1], widths[1:])))


def conv_flops(out_h, out_w, kernel, cin, cout) -> float:
    return 2.0 * out_h * out_w * kernel * kernel * cin * cout


def conv_transpose_flops(in_h, in_w, kernel, cin, cout) -> float:
    """Each input pixel scatters a kernel-sized patch: the useful multiply-adds."""
    return 2.0 * in_h * in_w * kernel * kernel * cin * cout


def conv_vae_flops(image_shape, latent, dense) -> float:
    h, w, c = image_shape
    enc = conv_flops(h // 2, w // 2, 3, c, 32) + conv_flops(h // 4, w // 4, 3, 32, 64)
    enc += dense_mlp_flops([(h // 4) * (w // 4) * 64, dense]) + 2 * 2 * dense * latent
    dec = dense_mlp_flops([latent, (h // 4) * (w // 4) * 64])
    dec += conv_transpose_flops(h // 4, w // 4, 3, 64, 64) + conv_transpose_flops(h // 2, w // 2, 3, 64, 32)
    dec += conv_transpose_flops(h, w, 3, 32, c)
    return enc + dec


def transformer_flops_per_token(num_params_no_embed: float, layers: int, heads: int,
                                head_dim: int, seq_len: int, train: bool = True) -> float:
    """6N + 12*L*H*Q*T per token for training (forward+backward); a third of it for inference."""
    total = 6.0 * num_params_no_embed + 12.0 * layers * heads * head_dim * seq_len
    return total if train else total / 3.0


# Dense (no sparsity) spec-sheet peaks in FLOP/s: (device_kind substring, bf16, tf32, f32).
# Searched in order, so a specific name ("H100 PCIe", "L40S", "TPU v5 lite") precedes the name
# it contains. jax's default precision runs float32 matmuls on tensor cores (TF32 on NVIDIA
# GPUs since Ampere, one bf16 pass on TPUs), so that column is the float32 peak unless the
# default is raised to full float32. None: no figure, and the MFU column stays blank.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100 NVL", 835e12, 418e12, 60e12),
    ("H100", 989e12, 495e12, 67e12),
    ("H200 NVL", 835e12, 418e12, 60e12),
    ("H200", 989e12, 495e12, 67e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L40", 181e12, 90.5e12, 90.5e12),
    ("L4", 121e12, 60e12, 30.3e12),
    ("TPU v4", 275e12, 275e12, None),
    ("TPU v5 lite", 197e12, 197e12, None),
    ("TPU v5e", 197e12, 197e12, None),
    ("TPU v5", 459e12, 459e12, None),  # v5p reports "TPU v5"
    ("TPU v6", 918e12, 918e12, None),
)
# jax_default_matmul_precision values (lower case) that ask for true float32 matmuls.
FULL_FLOAT32 = ("highest", "float32", "f32_f32_f32")


def device_peak_flops(device, dtype: str = "float32", precision: str | None = None) -> float | None:
    """The spec-sheet peak for `dtype` matmuls on `device` (None: not in the table), with
    float32 read at `precision` (default: jax_default_matmul_precision)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"no peak for dtype {dtype!r}; use float32 or bfloat16")
    precision = jax.config.jax_default_matmul_precision if precision is None else precision
    kind = getattr(device, "device_kind", "").lower()
    for name, bf16, tf32, f32 in PEAK_FLOPS:
        if name.lower() in kind:
            if dtype == "bfloat16":
                return bf16
            mode = str(getattr(precision, "name", precision)).lower()  # a string or a DotAlgorithmPreset
            return f32 if mode in FULL_FLOAT32 else tf32
    return None


def measure_matmul_peak(size: int = 1024, repeats: int = 10, device=None, dtype=jnp.float32) -> float:
    """Achieved FLOP/s of a square matmul on `device`: the CPU's reference peak for MFU."""
    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    b = jax.device_put(jnp.ones((size, size), dtype), device)
    matmul = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    # A peak is the best the machine did: a median would sink (and MFU rise) when it is busy.
    return 2.0 * size**3 / min(times)


def mfu(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    if not peak or not step_seconds:
        return None
    return flops_per_step / step_seconds / peak
