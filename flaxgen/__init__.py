"""flaxgen: a JAX/Flax model zoo of generative models with one shared training loop."""

__version__ = "0.1.0"
