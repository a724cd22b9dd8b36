"""The Keras dense autoencoder: 784 -> 32 (relu) -> 784 (sigmoid), BCE, Adam, batch 256."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "autoencoder", "code_dim": 32},
        "data": {"name": "mnist", "batch_size": 256},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"steps": 11_700},  # 50 epochs
        "eval": {"every": 2_340},
        "checkpoint": {"every": 2_340},
        "log": {"every": 234},
    }
