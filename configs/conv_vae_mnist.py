"""The Keras convolutional VAE example: latent 2, so its manifold can be drawn."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "vae", "arch": "conv", "latent_dim": 2, "conv_dense": 16},
        "data": {"name": "mnist", "batch_size": 128},
        # On CPUs the batch of 128 runs as 4 micro-batches of 32: the same gradient, ~1.3x faster
        # steps on 2 cores (cache-sized work; benchmarks/README.md). Whole elsewhere.
        "optim": {"name": "adam", "lr": 1e-3, "cpu_micro_batch": 32},
        "train": {"steps": 14_040},  # 30 epochs, as the Keras example
        "eval": {"every": 2_340},
        "checkpoint": {"every": 2_340},
        "log": {"every": 234},
    }
