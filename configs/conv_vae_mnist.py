"""The Keras convolutional VAE example: latent 2, so its manifold can be drawn."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "vae", "arch": "conv", "latent_dim": 2, "conv_dense": 16},
        "data": {"name": "mnist", "batch_size": 128},
        # The batch of 128 as 4 micro-batches of 32: the same gradient, ~1.3x faster steps on a
        # 2-core CPU (cache-sized work; see benchmarks/README.md). 1 on accelerators.
        "optim": {"name": "adam", "lr": 1e-3, "accum_steps": 4},
        "train": {"steps": 14_040},  # 30 epochs, as the Keras example
        "eval": {"every": 2_340},
        "checkpoint": {"every": 2_340},
        "log": {"every": 234},
    }
