import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxgen.data import DataError, make_source
from flaxgen.data.text import Tokenizer
from helpers import tiny_config


def _batch(source, step, indices):
    return jax.device_get(jax.jit(source.batch)(source.arrays, source.epoch_inputs(step), jnp.int32(step),
                                                jnp.asarray(indices, jnp.uint32)))


def test_mnist_batches_are_binarized_deterministic_and_split_invariant(data_dir):
    source = make_source(tiny_config("vae"))
    assert source.info["image_shape"] == (28, 28, 1) and source.info["num_train"] == 60_000
    whole = _batch(source, 3, np.arange(16))
    assert whole["image"].shape == (16, 28, 28, 1)
    assert set(np.unique(whole["image"])) <= {0.0, 1.0}
    halves = [_batch(source, 3, np.arange(0, 8)), _batch(source, 3, np.arange(8, 16))]
    np.testing.assert_array_equal(whole["image"], np.concatenate([h["image"] for h in halves]))
    np.testing.assert_array_equal(whole["label"], _batch(source, 3, np.arange(16))["label"])
    assert not np.array_equal(whole["image"], _batch(source, 4, np.arange(16))["image"])


def test_dynamic_binarization_redraws_the_same_image_each_epoch(data_dir):
    source = make_source(tiny_config("vae"))
    per_epoch = source.steps_per_epoch
    order0, order1 = source.epoch_inputs(0)["order"], source.epoch_inputs(per_epoch)["order"]
    assert sorted(order0) == list(range(60_000)) and not np.array_equal(order0, order1)
    image = order0[0]
    later_step = per_epoch + int(np.where(order1 == image)[0][0]) // 16
    later_index = int(np.where(order1 == image)[0][0]) % 16
    first = _batch(source, 0, np.arange(16))
    second = _batch(source, later_step, np.arange(16))
    assert first["label"][0] == second["label"][later_index]
    assert not np.array_equal(first["image"][0], second["image"][later_index])


def test_test_set_binarization_is_fixed_across_seeds(data_dir):
    a = make_source(tiny_config("vae", seed=0)).eval_arrays()[0]
    b = make_source(tiny_config("vae", seed=1)).eval_arrays()[0]
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 1.0}


def test_missing_dataset_says_how_to_get_it(tmp_path):
    config = tiny_config("vae", data={"data_dir": str(tmp_path)})
    with pytest.raises(DataError) as error:
        make_source(config)
    message = str(error.value)
    assert "\n" not in message
    assert "flaxgen data prepare mnist" in message and "--manual-dir" in message


def test_tiny_shakespeare_windows_and_tokenizer(data_dir):
    # (the tiny VAE's data.binarize would be refused: text sources do not read it)
    config = tiny_config("autoencoder", data={"name": "tiny_shakespeare", "block_size": 32, "batch_size": 4})
    source = make_source(config)
    assert source.info["vocab_size"] == 65
    batch = _batch(source, 0, np.arange(4))
    assert batch["inputs"].shape == (4, 32)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    text = source.tokenizer.decode(batch["inputs"][0])
    np.testing.assert_array_equal(source.tokenizer.encode(text), batch["inputs"][0])
    with pytest.raises(ValueError, match="not in the training vocabulary"):
        source.tokenizer.encode("naïve")


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = Tokenizer("byte")
    assert tokenizer.decode(tokenizer.encode("naïve — ok")) == "naïve — ok"
    assert tokenizer.vocab_size == 256
