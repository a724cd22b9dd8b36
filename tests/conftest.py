import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path | None:
    configured = os.environ.get("FLAXGEN_DATA_DIR")
    if configured:
        return Path(configured)
    shared = REPO.parent / "shared" / "data" / "tfds"
    return shared if shared.is_dir() else None


# Many tests compile the same tiny programs, in this process and in subprocesses: share them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "flaxgen-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

DATA_DIR = _data_dir()
if DATA_DIR is not None:
    os.environ["FLAXGEN_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None or not (DATA_DIR / "mnist").is_dir():
        pytest.fail("test data not found: set FLAXGEN_DATA_DIR to a TFDS data dir holding mnist and "
                    "tiny_shakespeare (see ../shared/data/README.md)")
    return DATA_DIR


@pytest.fixture
def full_float32_matmuls():
    """Float32 matmuls at full precision: on GPUs jax's default is TF32 (~1e-3 relative), which
    float32 comparisons between two formulations of one function cannot tell from a bug."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield
