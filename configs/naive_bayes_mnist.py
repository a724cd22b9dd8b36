"""Per-pixel Bernoulli naive Bayes on binarized MNIST: one epoch of counting."""


def get_config():
    return {
        "seed": 0,
        "model": {"family": "naive_bayes", "smoothing": 1.0, "class_conditional": False},
        "data": {"name": "mnist", "binarize": "dynamic", "batch_size": 500},
        "train": {"steps": 120},  # one epoch
        "eval": {"every": 120},
        "checkpoint": {"every": 120},
        "log": {"every": 20},
    }
