"""Tiny configs shared by the tests."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from flaxgen.config import build_config

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "vae": {"model": {"family": "vae", "arch": "dense", "encoder_hidden": [32],
                      "decoder_hidden": [32], "latent_dim": 4},
            "data": {"name": "mnist", "binarize": "dynamic", "batch_size": 16, "eval_batch_size": 100}},
    "conv_vae": {"model": {"family": "vae", "arch": "conv", "latent_dim": 2, "conv_dense": 8},
                 "data": {"name": "mnist", "batch_size": 8, "eval_batch_size": 100}},
    "autoencoder": {"model": {"family": "autoencoder", "code_dim": 8},
                    "data": {"name": "mnist", "batch_size": 16, "eval_batch_size": 100}},
    "naive_bayes": {"model": {"family": "naive_bayes"},
                    "data": {"name": "mnist", "binarize": "dynamic", "batch_size": 100,
                             "eval_batch_size": 500}},
}


def tiny_config(kind: str = "vae", overrides: list[str] | None = None, **sections):
    raw = copy.deepcopy(TINY[kind])
    raw.setdefault("train", {})["steps"] = 20
    raw["eval"] = {"every": 1000, "batches": 2, "iw_samples": 8, "iw_batch": 4, "pictures": False}
    raw["checkpoint"] = {"every": 10, "keep": 3, "async": True}
    raw["log"] = {"every": 5, "tensorboard": True, "progress": False}
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return build_config(raw, overrides)


def tree_equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


def tree_max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_python(code: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter with `devices` fake CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
