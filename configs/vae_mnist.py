"""Dense VAE on dynamically binarized MNIST: 784-512-256 -> z(32) -> 256-512-784 Bernoulli."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "vae", "arch": "dense", "encoder_hidden": [512, 256],
                  "decoder_hidden": [256, 512], "latent_dim": 32},
        "data": {"name": "mnist", "binarize": "dynamic", "batch_size": 128},
        "optim": {"name": "adam", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 200,
                  "min_lr": 1e-4},
        "train": {"steps": 40_000},
        "eval": {"every": 5_000, "iw_samples": 1000},
        "checkpoint": {"every": 5_000},
        "log": {"every": 500},
    }
