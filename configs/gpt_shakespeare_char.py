"""The small CPU recipe: character-level tiny_shakespeare, block 64, batch 12, 4 layers, 4 heads,
width 128, dropout 0, AdamW 1e-3 (0.9, 0.99), wd 0.1, 100 warm-up steps, cosine to 1e-4 at 2000."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "transformer", "n_layer": 4, "n_head": 4, "d_model": 128, "dropout": 0.0,
                  "positions": "learned"},
        "data": {"name": "tiny_shakespeare", "tokenizer": "char", "block_size": 64, "batch_size": 12,
                 "eval_batch_size": 12, "eval_split": "validation"},
        "optim": {"name": "adamw", "lr": 1e-3, "b1": 0.9, "b2": 0.99, "weight_decay": 0.1,
                  "schedule": "cosine", "warmup_steps": 100, "decay_steps": 2000, "min_lr": 1e-4,
                  "grad_clip": 1.0,
                  # On CPUs the batch of 12 runs as 2 micro-batches of 6: the same gradient, ~15%
                  # faster steps on 2 cores (cache-sized work; benchmarks/README.md). Whole elsewhere.
                  "cpu_micro_batch": 6},
        # On CPUs the step's dots run on Eigen, not YNNPACK: 1.07-1.12x on an AVX2 Zen 3, 1.02x on
        # a Zen 4 (benchmarks/README.md, items 11 and 25).
        "train": {"steps": 2000, "xla_cpu_options": ["xla_cpu_experimental_ynn_fusion_type="]},
        "eval": {"every": 500, "batches": 20},
        "checkpoint": {"every": 1000},
        "log": {"every": 100},
    }
