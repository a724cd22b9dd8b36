"""Reading TFDS datasets with `tfds.data_source` (no tensorflow), decoded once and cached."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from flaxgen.data.base import DataError

ENV_DATA_DIR = "FLAXGEN_DATA_DIR"
ENV_CACHE_DIR = "FLAXGEN_CACHE_DIR"


def resolve_data_dir(configured: str | None) -> str:
    if configured:
        return os.path.expanduser(configured)
    if os.environ.get(ENV_DATA_DIR):
        return os.path.expanduser(os.environ[ENV_DATA_DIR])
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _how_to_get(name: str, data_dir: str) -> str:
    return (f"dataset '{name}' is not prepared in {data_dir}: download it with "
            f"`flaxgen data prepare {name} --data-dir {data_dir}` (online), or build it offline from "
            f"the raw files with `flaxgen data prepare {name} --manual-dir RAW_DIR --data-dir {data_dir}` "
            f"(pip install 'flaxgen[prepare]'), or set data.data_dir / ${ENV_DATA_DIR} to where it is")


def _prepared_version_dir(name: str, data_dir: str) -> Path | None:
    root = Path(data_dir) / name
    if not root.is_dir():
        return None
    versions = sorted(p for p in root.iterdir() if (p / "dataset_info.json").is_file())
    return versions[-1] if versions else None


def open_split(name: str, split: str, data_dir: str | None):
    data_dir = resolve_data_dir(data_dir)
    version_dir = _prepared_version_dir(name, data_dir)
    if version_dir is None:
        raise DataError(_how_to_get(name, data_dir))
    if not any(".array_record" in p.name for p in version_dir.iterdir()):
        raise DataError(f"dataset '{name}' in {version_dir} is not in array_record format; rebuild it "
                        f"with `flaxgen data prepare {name} --data-dir DIR` (flaxgen reads array_record)")
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False), version_dir
    except Exception as error:  # tfds raises several types for a bad split or files
        raise DataError(f"cannot read split '{split}' of '{name}' in {data_dir}: {error}") from error


def _cache_path(version_dir: Path, split: str) -> Path:
    cache_root = Path(os.path.expanduser(os.environ.get(ENV_CACHE_DIR, "~/.cache/flaxgen")))
    digest = hashlib.sha256(str(version_dir.resolve()).encode()).hexdigest()[:12]
    return cache_root / f"{version_dir.parent.name}-{version_dir.name}-{split}-{digest}.npz"


def load_image_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,H,W,C], labels int32 [N]), PNG-decoded once then read from a cache."""
    source, version_dir = open_split(name, split, data_dir)
    cache = _cache_path(version_dir, split)
    if cache.is_file():
        try:
            with np.load(cache) as stored:
                if len(stored["labels"]) == len(source):
                    return stored["images"], stored["labels"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    examples = source.__getitems__(range(len(source)))
    images = np.stack([e["image"] for e in examples]).astype(np.uint8)
    labels = np.asarray([e["label"] for e in examples], dtype=np.int32)
    _atomic_savez(cache, images=images, labels=labels)
    return images, labels


def load_text_split(name: str, split: str, data_dir: str | None) -> bytes:
    source, _ = open_split(name, split, data_dir)
    return b"".join(bytes(e["text"]) for e in source.__getitems__(range(len(source))))


def _atomic_savez(path: Path, **arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, **arrays)
        os.replace(handle.name, path)
    except OSError:
        pass  # the cache is an optimisation; a read-only home only costs decode time


def prepare(name: str, data_dir: str | None, manual_dir: str | None) -> str:
    """Build a dataset with TFDS's own builder (online, or offline from raw files)."""
    data_dir = resolve_data_dir(data_dir)
    try:
        import tensorflow  # noqa: F401  (TFDS builders need it to write)
    except ImportError:
        raise DataError("building datasets needs tensorflow: pip install 'flaxgen[prepare]'") from None
    import tensorflow_datasets as tfds

    if manual_dir and not Path(manual_dir).is_dir():
        raise DataError(f"--manual-dir {manual_dir} is not a directory of the raw files")
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    # One download dir per dataset: mnist and fashion_mnist share file names.
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads", name),
                                 download_config=download_config)
    return builder.data_dir
