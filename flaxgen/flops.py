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


# Dense peak FLOP/s by device_kind substring and dtype (vendor spec sheets, no sparsity).
PEAK_FLOPS = {
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("L4", "bfloat16"): 121e12, ("L4", "float32"): 30e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v4", "float32"): 275e12 / 4,
    ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v5e", "bfloat16"): 197e12,
    ("TPU v5p", "bfloat16"): 459e12, ("TPU v6", "bfloat16"): 918e12,
}


def device_peak_flops(device, dtype: str = "float32") -> float | None:
    kind = getattr(device, "device_kind", "")
    for (name, peak_dtype), value in PEAK_FLOPS.items():
        if name.lower() in kind.lower() and peak_dtype == dtype:
            return value
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
