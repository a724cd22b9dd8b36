import pytest

from flaxgen.config import ConfigError, build_config, load_config
from helpers import REPO


def test_config_files_load_and_overrides_are_typed():
    config = load_config(REPO / "configs/vae_mnist.py", ["optim.lr=3e-4", "train.steps=7",
                                                         "data.name=fashion_mnist"])
    assert config.optim.lr == 3e-4
    assert config.train.steps == 7
    assert config.data.name == "fashion_mnist"
    assert config.model.latent_dim == 32


def test_int_override_of_float_key_becomes_float():
    config = load_config(REPO / "configs/vae_mnist.py", ["optim.lr=1"])
    assert isinstance(config.optim.lr, float)


@pytest.mark.parametrize("override, words", [
    ("model.latnet_dim=3", ["unknown config key 'model.latnet_dim'", "model.latent_dim"]),
    ("optm.lr=1", ["unknown config key 'optm'", "optim"]),
    ("train.steps=abc", ["train.steps", "int"]),
    ("optim=3", ["section"]),
    ("optim.lr", ["a.b=value"]),
    ("parallel.strategy=ring", ["parallel.strategy", "mesh"]),
    # adam and sgd have no weight decay: a value there would be silently ignored
    ("optim.weight_decay=0.1", ["optim.weight_decay", "'adam'", "optim.name=adamw"]),
    # configs/vae_mnist.py is a dense VAE: the conv layers' keys would change nothing
    ("model.conv=gemm", ["model.conv", "model.arch=conv", "'dense'"]),
    ("model.conv_dense=8", ["model.conv_dense", "model.arch=conv"]),
    ("model.arch=cnn", ["model.arch", "dense, conv"]),
    ("train.xla_cpu_options=['fast_math']", ["train.xla_cpu_options", "'fast_math'", "'xla_name=value'"]),
    ("train.xla_cpu_options=[3]", ["train.xla_cpu_options", "3", "'xla_name=value'"]),
    ("train.xla_cpu_options=3", ["train.xla_cpu_options", "list"]),
])
def test_bad_overrides_fail_in_one_line(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(REPO / "configs/vae_mnist.py", [override])
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("config_file, override", [
    ("dcgan_mnist.py", "model.hidden=[64]"),      # the dense GAN's widths
    ("gan_ring.py", "model.dcgan_width=16"),
    ("gan_mnist.py", "model.mlp_depth=2"),
])
def test_a_key_only_another_gan_arch_reads_is_refused(config_file, override):
    with pytest.raises(ConfigError, match=f"config key '{override.split('=')[0]}' .* only model.arch="):
        load_config(REPO / "configs" / config_file, [override])


def test_keys_of_the_chosen_arch_and_saved_configs_still_load(tmp_path):
    conv = load_config(REPO / "configs/dcgan_mnist.py", ["model.conv=gemm"])
    assert conv.model.conv == "gemm"
    # a saved config.json holds every key, the other arches' at their defaults
    from flaxgen.config import load_saved_config, save_config
    save_config(conv, tmp_path / "config.json")
    assert load_saved_config(tmp_path).to_dict() == conv.to_dict()


@pytest.mark.parametrize("config_file, override, readers", [
    ("vae_mnist.py", "data.block_size=128", "a TFDS text or synthetic tokens"),
    ("gpt_shakespeare_char.py", "data.binarize=dynamic", "a TFDS image set or synthetic images"),
    ("gan_ring.py", "data.data_dir=elsewhere", "a TFDS image set or a TFDS text"),
    ("vae_mnist.py", "data.image_shape=[32, 32, 3]", "synthetic images"),
])
def test_a_data_key_the_source_never_reads_is_refused(config_file, override, readers):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}' .* never reads it, only {readers} do; leave {key}"):
        load_config(REPO / "configs" / config_file, [override])


def test_data_keys_load_where_the_source_reads_them():
    text = load_config(REPO / "configs/gpt_shakespeare_char.py", ["data.block_size=128", "data.tokenizer=byte"])
    assert (text.data.block_size, text.data.tokenizer) == (128, "byte")
    tokens = build_config({"model": {"family": "transformer"},
                           "data": {"name": "synthetic_tokens", "block_size": 32, "vocab_size": 50}})
    assert tokens.data.vocab_size == 50
    images = build_config({"model": {"family": "vae"}, "data": {"name": "synthetic_images", "binarize": "dynamic",
                                                                  "image_shape": [32, 32, 3]}})
    assert images.data.image_shape == [32, 32, 3]


def test_unknown_key_in_config_file_is_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'model.hiden'"):
        build_config({"model": {"family": "vae", "hiden": 3}})


def test_unknown_family_names_the_choices():
    with pytest.raises(ConfigError, match="unknown model.family 'vea'.*vae"):
        build_config({"model": {"family": "vea"}})


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_every_shipped_config_is_valid(name):
    load_config(REPO / "configs" / name)


@pytest.mark.parametrize("override, words", [
    ("optim.accum_steps=2", ["'optim.accum_steps' (2) and 'optim.cpu_micro_batch' (6) both split",
                             "optim.cpu_micro_batch=None"]),
    ("optim.cpu_micro_batch=0", ["'optim.cpu_micro_batch' must be a positive integer or None, got 0"]),
])
def test_a_batch_split_two_ways_or_into_nothing_is_refused(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(REPO / "configs/gpt_shakespeare_char.py", [override])
    assert "\n" not in str(error.value) and all(word in str(error.value) for word in words)


def test_cpu_micro_batches_split_the_batch_on_cpus_only(tmp_path):
    from flaxgen.config import load_saved_config, save_config
    from flaxgen.training.loop import run_config

    config = load_config(REPO / "configs/conv_vae_mnist.py")      # batch 128, cpu_micro_batch 32
    assert run_config(config, 128, "cpu").optim.accum_steps == 4
    assert run_config(config, 64, "cpu").optim.accum_steps == 2      # two devices' share
    assert run_config(config, 32, "cpu").optim.accum_steps == 1      # no larger: whole
    assert run_config(config, 128, "gpu").optim.accum_steps == 1
    assert run_config(config, 128, "cpu").optim.cpu_micro_batch is None
    # the config itself, and what a workdir saves, keep the user's setting for any backend
    assert (config.optim.accum_steps, config.optim.cpu_micro_batch) == (1, 32)
    save_config(config, tmp_path / "config.json")
    assert load_saved_config(tmp_path).optim.cpu_micro_batch == 32
    with pytest.raises(ConfigError, match="^per-device batch 48 does not divide into micro-batches of "
                                          "optim.cpu_micro_batch=32; use a data.batch_size"):
        run_config(config, 48, "cpu")


def test_a_run_builds_with_its_cpu_micro_batches():
    from flaxgen.training.loop import split_batch

    strategy, run = split_batch(load_config(REPO / "configs/gpt_shakespeare_char.py"))
    assert run.optim.accum_steps == 2 and strategy.num_devices == 1
