"""The tutorials' dense GAN: z(100) -> 256 -> 512 -> 784 sigmoid; D: 784 -> 512 -> 256 -> 1."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "gan", "arch": "dense", "latent_dim": 100, "hidden": [256, 512],
                  "loss": "nonsaturating", "r1_gamma": 1.0, "ema_decay": 0.999},
        "data": {"name": "mnist", "batch_size": 64, "eval_batch_size": 500},
        "optim": {"name": "adam", "lr": 2e-4, "b1": 0.5, "b2": 0.999},
        "optim_d": {"lr": 2e-4, "b1": 0.5, "b2": 0.999},
        "train": {"steps": 20_000},
        "eval": {"every": 5_000, "batches": 2},
        "checkpoint": {"every": 5_000},
        "log": {"every": 500},
    }
