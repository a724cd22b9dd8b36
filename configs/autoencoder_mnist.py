"""The Keras dense autoencoder: 784 -> 32 (relu) -> 784 (sigmoid), BCE, Adam, batch 256."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "autoencoder", "code_dim": 32},
        "data": {"name": "mnist", "batch_size": 256},
        "optim": {"name": "adam", "lr": 1e-3},
        # On CPUs the step's dots run on Eigen, not YNNPACK: 1.08-1.10x on an AVX2 Zen 3, 1.14x on
        # a Zen 4 (benchmarks/README.md, items 11 and 25).
        "train": {"steps": 11_700,  # 50 epochs
                  "xla_cpu_options": ["xla_cpu_experimental_ynn_fusion_type="]},
        "eval": {"every": 2_340},
        "checkpoint": {"every": 2_340},
        "log": {"every": 234},
    }
