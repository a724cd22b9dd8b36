"""Experiment configs: Python files returning nested dicts, merged strictly over defaults.

Every key a config file or a `--config.a.b=v` override names must exist in the defaults of the
shared loop or of the model family, so a typo fails in one line before anything compiles.
"""
from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key and the fix."""


class Config(dict):
    """A dict with attribute access, so configs read as `config.optim.lr`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo):
        return Config({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, Config) else v) for k, v in self.items()}


def to_config(tree: Any) -> Any:
    if isinstance(tree, dict):
        return Config({k: to_config(v) for k, v in tree.items()})
    return tree


# Keys every experiment has. Families add their own `model` keys (and extra sections) through
# `defaults()` in their module; `None` means "no value", typed by the override parser as any.
COMMON_DEFAULTS: dict = {
    "seed": 0,
    "model": {"family": ""},
    "data": {
        "name": "mnist",            # a TFDS name, or synthetic_images / synthetic_tokens / ring8 / grid25
        "data_dir": None,           # else $FLAXGEN_DATA_DIR, else TFDS's default
        "train_split": "train",
        "eval_split": "test",
        "batch_size": 128,          # global batch, split across devices
        "eval_batch_size": 500,
        "binarize": "none",         # none | dynamic (fresh Bernoulli draw each step from the data key)
        "image_shape": [28, 28, 1],  # synthetic images
        "num_examples": 4096,       # synthetic data sets
        "block_size": 64,           # text windows
        "tokenizer": "char",        # char | byte
        "vocab_size": 256,          # synthetic tokens
    },
    "optim": {
        "name": "adam",             # adam | adamw | sgd
        "lr": 1e-3,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,        # adamw: applied to matrices only
        "schedule": "constant",     # constant | cosine (linear warm-up, cosine decay to min_lr)
        "warmup_steps": 0,
        "decay_steps": None,        # defaults to train.steps
        "min_lr": 0.0,
        "grad_clip": None,          # global-norm clipping
        "accum_steps": 1,           # the step's gradient as a scan over this many micro-batches
        "cpu_micro_batch": None,    # on CPUs only: micro-batches of this many examples per device
    },
    "train": {
        "steps": 1000,
        "time_limit_s": None,       # stop (and checkpoint) after this many seconds of training
        # XLA compiler options for the train step on CPUs only, as "name=value" strings
        # (benchmarks/README.md, item 15); other backends compile without them
        "xla_cpu_options": [],
    },
    "parallel": {
        "strategy": "auto",         # auto | single | mesh | pmap
        "num_devices": None,        # default: all local devices
    },
    "eval": {
        "every": 1000,
        "batches": None,            # None: the whole eval split
        "iw_samples": 1000,         # importance samples for the VAE's NLL estimate (flaxgen eval)
        "iw_batch": 100,
        "pictures": True,
    },
    "checkpoint": {
        "every": 1000,
        "keep": 3,
        "async": True,
    },
    "log": {
        "every": 100,
        "tensorboard": True,
        "progress": True,
    },
}


def _merge_strict(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(_unknown_key_message(where, base, path))
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}' is a section; give it a dict, not {value!r}")
            out[key] = _merge_strict(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def _unknown_key_message(where: str, section: dict, path: str) -> str:
    name = where[len(path):]
    close = difflib.get_close_matches(name, list(section), n=1)
    hint = f"did you mean '{path}{close[0]}'?" if close else f"known keys here: {', '.join(sorted(section))}"
    return f"unknown config key '{where}': {hint}"


def defaults_for(family: str) -> dict:
    from flaxgen.models import get_family_module, family_names

    if not family:
        raise ConfigError(f"config has no model.family; set it to one of: {', '.join(family_names())}")
    module = get_family_module(family)
    merged = copy.deepcopy(COMMON_DEFAULTS)
    for section, values in module.defaults().items():
        if isinstance(values, dict):
            merged.setdefault(section, {}).update(copy.deepcopy(values))
        else:
            merged[section] = values
    return merged


def build_config(raw: dict, overrides: list[str] | None = None) -> Config:
    """Merge a raw config dict and `a.b=v` overrides over the defaults, strictly."""
    family = raw.get("model", {}).get("family", "")
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key == "model.family":
            family = value
    merged = _merge_strict(defaults_for(family), raw)
    for item in overrides or []:
        apply_override(merged, item)
    config = to_config(merged)
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass one of the files in configs/")
    spec = importlib.util.spec_from_file_location(f"flaxgen_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(); it must return a dict")
    return build_config(module.get_config(), overrides)


def _parse_value(text: str, current: Any, key: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # bare words are strings: --config.data.name=mnist
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' takes True or False, got {text!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is not type(current):
        raise ConfigError(
            f"config key '{key}' takes a {type(current).__name__} (now {current!r}), got {text!r}")
    return value


def apply_override(config: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} needs the form a.b=value, e.g. optim.lr=3e-4")
    key, _, text = item.partition("=")
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
        path = ".".join(parts[:depth]) + ("." if depth else "")
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(_unknown_key_message(key if depth == len(parts) - 1 else path + part,
                                                   node if isinstance(node, dict) else {}, path))
        if depth == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"config key '{key}' is a section; override one of its keys")
            node[part] = _parse_value(text, node[part], key)
        else:
            node = node[part]


def optimizer_sections(config: Config) -> list[str]:
    """`optim`, and each player's own optimizer section where a family has one (`optim_d`)."""
    return [name for name in config if name == "optim" or name.startswith("optim_")]


def validate(config: Config) -> None:
    """Checks that need no devices and no compilation."""
    positive = [("data.batch_size", config.data.batch_size), ("train.steps", config.train.steps),
                ("eval.every", config.eval.every), ("checkpoint.every", config.checkpoint.every),
                ("log.every", config.log.every)]
    positive += [(f"{name}.accum_steps", config[name].accum_steps) for name in optimizer_sections(config)]
    for key, value in positive:
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"config key '{key}' must be a positive integer, got {value!r}")
    choices = {
        "parallel.strategy": (config.parallel.strategy, ("auto", "single", "mesh", "pmap")),
        "data.binarize": (config.data.binarize, ("none", "dynamic")),
        "data.tokenizer": (config.data.tokenizer, ("char", "byte")),
    }
    for name in optimizer_sections(config):
        choices[f"{name}.name"] = (config[name].name, ("adam", "adamw", "sgd"))
        choices[f"{name}.schedule"] = (config[name].schedule, ("constant", "cosine"))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}' is {value!r}; use one of: {', '.join(allowed)}")
    _check_unread_keys(config)
    xla_cpu_options(config)
    for name in optimizer_sections(config):
        optim = config[name]
        size = optim.cpu_micro_batch
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ConfigError(f"config key '{name}.cpu_micro_batch' must be a positive integer or None, got {size!r}")
        if size is not None and optim.accum_steps != 1:
            raise ConfigError(f"config keys '{name}.accum_steps' ({optim.accum_steps}) and '{name}.cpu_micro_batch' "
                              f"({size}) both split the batch; set {name}.accum_steps=1 or "
                              f"{name}.cpu_micro_batch=None")
        if optim.weight_decay and optim.name != "adamw":
            raise ConfigError(f"config key '{name}.weight_decay' is {optim.weight_decay} but {name}.name is "
                              f"{optim.name!r}, which has no weight decay; set {name}.name=adamw or "
                              f"{name}.weight_decay=0")


def xla_cpu_options(config: Config) -> dict[str, str]:
    """`train.xla_cpu_options` as the compiler_options dict jax's compile takes."""
    entries = config.train.xla_cpu_options
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"config key 'train.xla_cpu_options' must be a list of 'name=value' strings, "
                          f"got {entries!r}")
    options = {}
    for entry in entries:
        name, equals, value = entry.partition("=") if isinstance(entry, str) else ("", "", "")
        if not equals or not name.startswith("xla_"):
            raise ConfigError(f"config key 'train.xla_cpu_options' has {entry!r}; give each option as "
                              f"'xla_name=value', e.g. 'xla_cpu_enable_fast_math=False'")
        options[name] = value
    return options


def _unread_key(section: Config, defaults: dict, keys_read_by: dict, chosen: str) -> tuple[str, list[str]] | None:
    """The first key of `section` that the `chosen` variant never reads but another does, set away
    from its default (a mistake that would change nothing, silently), with the variants reading it."""
    for key in sorted({key for keys in keys_read_by.values() for key in keys} - set(keys_read_by[chosen])):
        if section[key] != defaults[key]:
            return key, [variant for variant, keys in keys_read_by.items() if key in keys]
    return None


def _check_unread_keys(config: Config) -> None:
    """Model keys of another arch (model.conv=gemm on a dense VAE) and data keys of another kind of
    source (data.block_size for MNIST, data.binarize for text)."""
    from flaxgen.data.base import KEYS_READ_BY_KIND, source_kind
    from flaxgen.models import get_family_module

    defaults = defaults_for(config.model.family)
    arch_keys = getattr(get_family_module(config.model.family), "ARCH_ONLY_KEYS", None)
    if arch_keys:
        arch = config.model.arch
        if arch not in arch_keys:
            raise ConfigError(f"config key 'model.arch' is {arch!r}; use one of: {', '.join(arch_keys)}")
        unread = _unread_key(config.model, defaults["model"], arch_keys, arch)
        if unread:
            key, (other, *_) = unread
            raise ConfigError(f"config key 'model.{key}' is {config.model[key]!r} but only model.arch={other} "
                              f"reads it and model.arch is {arch!r}; set model.arch={other} or leave "
                              f"model.{key} at its default {defaults['model'][key]!r}")
    kind = source_kind(config.data.name)
    unread = _unread_key(config.data, defaults["data"], KEYS_READ_BY_KIND, kind)
    if unread:
        key, readers = unread
        raise ConfigError(f"config key 'data.{key}' is {config.data[key]!r} but data.name={config.data.name!r} "
                          f"({kind}) never reads it, only {' or '.join(readers)} do; leave data.{key} at "
                          f"its default {defaults['data'][key]!r}")


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load_saved_config(workdir: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: is {workdir} a flaxgen workdir? (flaxgen train writes it)")
    return build_config(json.loads(path.read_text()), overrides)
