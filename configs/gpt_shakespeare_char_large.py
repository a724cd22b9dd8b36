"""A GPU recipe: block 256, batch 64, 6 layers, 6 heads, width 384, dropout 0.2, 5000 steps."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "transformer", "n_layer": 6, "n_head": 6, "d_model": 384, "dropout": 0.2,
                  "positions": "learned"},
        "data": {"name": "tiny_shakespeare", "tokenizer": "char", "block_size": 256, "batch_size": 64,
                 "eval_batch_size": 64, "eval_split": "validation"},
        "optim": {"name": "adamw", "lr": 1e-3, "b1": 0.9, "b2": 0.99, "weight_decay": 0.1,
                  "schedule": "cosine", "warmup_steps": 100, "decay_steps": 5000, "min_lr": 1e-4,
                  "grad_clip": 1.0},
        "train": {"steps": 5000},
        "eval": {"every": 500, "batches": 20},
        "checkpoint": {"every": 1000},
        "log": {"every": 100},
    }
