"""PNG pictures: sample and reconstruction grids, 2-D latent manifold and latent scatter,
2-D sample scatters, and loss curves from metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images, path, columns: int | None = None, scale: int = 2) -> Path:
    """Tile images (N, H, W, C) with values in [0, 1] into one PNG."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    canvas = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = image
    pixels = (canvas * 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def image_family_pictures(sample, reconstruct, state, source, key, outdir, step) -> list[Path]:
    outdir = Path(outdir)
    paths = [save_grid(jax.device_get(jax.jit(sample, static_argnums=2)(state, key, 64)),
                       outdir / f"samples_{step:07d}.png")]
    if reconstruct is not None:
        originals = next(source.eval_batches(32, 1))["image"]
        recon = np.asarray(jax.jit(reconstruct)(state, jnp.asarray(originals)))
        pairs = np.stack([originals, recon], 1).reshape(-1, *originals.shape[1:])
        paths.append(save_grid(pairs, outdir / f"reconstructions_{step:07d}.png", columns=16))
    return paths


def latent_pictures(decode, encode_mean, state, source, outdir, step, grid=20, scale=2.0):
    """The decoded 2-D latent manifold (a grid of z in [-scale, scale]^2, as the Keras VAE example
    draws it) and the test set's latent means coloured by label."""
    outdir = Path(outdir)
    values = np.linspace(-scale, scale, grid, dtype=np.float32)
    # Row 0 is the top of the picture: highest z2 first.
    z = np.array([[x, y] for y in values[::-1] for x in values], np.float32)
    images = np.asarray(jax.jit(decode)(state, jnp.asarray(z)))
    paths = [save_grid(images, outdir / f"manifold_{step:07d}.png", columns=grid)]
    pixels, labels = source.eval_arrays()
    means = np.concatenate([np.asarray(jax.jit(encode_mean)(state, jnp.asarray(pixels[i:i + 1000])))
                            for i in range(0, len(pixels), 1000)])
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 6))
    points = axis.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=2)
    figure.colorbar(points, ax=axis, label="label")
    axis.set_xlabel("z[0]")
    axis.set_ylabel("z[1]")
    axis.set_title(f"test-set latent means, step {step}")
    path = outdir / f"latent_means_{step:07d}.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return paths + [path]


def scatter_2d(samples, centers, path, title: str = "") -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 6))
    samples = np.asarray(samples)
    axis.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, label="samples")
    axis.scatter(centers[:, 0], centers[:, 1], marker="x", c="red", s=40, label="true centres")
    axis.set_aspect("equal")
    axis.legend(loc="upper right")
    axis.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def loss_curves(metrics_file, path) -> Path | None:
    """One panel per training metric (train and eval lines) from metrics.jsonl."""
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        prefix = record.get("kind", "train")
        for name, value in record.items():
            if name in ("step", "kind", "time", "steps_per_s") or not isinstance(value, (int, float)):
                continue
            xs, ys = series.setdefault(f"{prefix}/{name}", ([], []))
            xs.append(record["step"])
            ys.append(value)
    if not series:
        return None
    plt = _pyplot()
    names = sorted(series)
    columns = min(3, len(names))
    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        xs, ys = series[name]
        axis.plot(xs, ys, marker="." if len(xs) < 30 else None)
        axis.set_title(name)
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
