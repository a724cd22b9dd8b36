"""GPT-2 124M shape (12 layers, 12 heads, width 768, block 1024, vocab 50304) on synthetic
tokens: for benchmarking, no dataset needed."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "transformer", "n_layer": 12, "n_head": 12, "d_model": 768, "dropout": 0.0,
                  "positions": "learned", "vocab_size": 50304, "dtype": "bfloat16"},
        "data": {"name": "synthetic_tokens", "block_size": 1024, "batch_size": 8, "vocab_size": 50257,
                 "num_examples": 1_000_000, "eval_batch_size": 8},
        "optim": {"name": "adamw", "lr": 6e-4, "b1": 0.9, "b2": 0.95, "weight_decay": 0.1,
                  "schedule": "cosine", "warmup_steps": 100, "min_lr": 6e-5, "grad_clip": 1.0},
        "train": {"steps": 1000},
        "eval": {"every": 1000, "batches": 2},
        "checkpoint": {"every": 1000},
        "log": {"every": 10},
    }
