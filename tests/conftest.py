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


DATA_DIR = _data_dir()
if DATA_DIR is not None:
    os.environ["FLAXGEN_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None or not (DATA_DIR / "mnist").is_dir():
        pytest.fail("test data not found: set FLAXGEN_DATA_DIR to a TFDS data dir holding mnist and "
                    "tiny_shakespeare (see ../shared/data/README.md)")
    return DATA_DIR
