"""DCGAN for 28x28 MNIST: transposed convolutions up from 7x7, strided convolutions down."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "gan", "arch": "dcgan", "latent_dim": 64, "dcgan_width": 32,
                  "loss": "nonsaturating", "r1_gamma": 1.0, "ema_decay": 0.999},
        "data": {"name": "mnist", "batch_size": 64, "eval_batch_size": 500},
        "optim": {"name": "adam", "lr": 2e-4, "b1": 0.5, "b2": 0.999},
        "optim_d": {"lr": 2e-4, "b1": 0.5, "b2": 0.999},
        # on CPUs, YNNPACK for the matmuls only: ~1.04x faster steps (benchmarks/README.md, item 15);
        # drop it if you split the batch (optim.cpu_micro_batch=32 with it: 0.43x)
        "train": {"steps": 12_000,   # ~15 CPU-minutes on 2 cores
                  "xla_cpu_options": ["xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"]},
        "eval": {"every": 4_000, "batches": 2},
        "checkpoint": {"every": 4_000},
        "log": {"every": 200},
    }
