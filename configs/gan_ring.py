"""2-D ring of 8 Gaussians (radius 2, std 0.02): MLP players, R1 penalty, EMA sampling."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "gan", "arch": "mlp2d", "latent_dim": 16, "mlp_width": 128,
                  "mlp_depth": 3, "loss": "nonsaturating", "r1_gamma": 0.1, "ema_decay": 0.999},
        "data": {"name": "ring8", "batch_size": 256, "eval_batch_size": 2500},
        "optim": {"name": "adam", "lr": 1e-3, "b1": 0.5, "b2": 0.999},
        "optim_d": {"lr": 1e-3, "b1": 0.5, "b2": 0.999},
        "train": {"steps": 20_000},
        "eval": {"every": 5_000, "batches": 1},
        "checkpoint": {"every": 5_000},
        "log": {"every": 500},
    }
