"""2-D 5x5 grid of 25 Gaussians (centres {-4..4}^2 step 2, std 0.05): MLP players, R1 penalty, EMA sampling."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "gan", "arch": "mlp2d", "latent_dim": 16, "mlp_width": 128,
                  "mlp_depth": 3, "loss": "nonsaturating", "r1_gamma": 0.1, "ema_decay": 0.999},
        "data": {"name": "grid25", "batch_size": 256, "eval_batch_size": 2500},
        "optim": {"name": "adam", "lr": 1e-3, "b1": 0.5, "b2": 0.999},
        "optim_d": {"lr": 1e-3, "b1": 0.5, "b2": 0.999},
        "train": {"steps": 30_000},
        "eval": {"every": 7_500, "batches": 1},
        "checkpoint": {"every": 7_500},
        "log": {"every": 500},
    }
