"""Orbax checkpoints of the train state plus a JSON record of the data position.

Orbax writes each checkpoint into a temporary directory and renames it when complete, and the
manager deletes old steps only after a new one is committed, so a crash mid-write never leaves a
half-written checkpoint in place of a good one.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """An unreadable or mismatched checkpoint; the message says what to do."""


class Checkpointer:
    def __init__(self, directory, keep: int = 3, use_async: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=use_async,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Starts an (async) save; `state` must not be donated until the write has copied it,
        which orbax guarantees by copying to host before returning."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state):
        """State and meta of `step`. `abstract_state` gives shapes, dtypes and placement."""
        path = self.directory / str(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  meta=ocp.args.JsonRestore())
        # Compare the stored tree first: a restore that fails part-way leaves orbax's reads of the
        # other arrays un-awaited, and a tree that differs is not a damaged file.
        difference = state_difference(path / "state", abstract_state)
        if difference:
            # every checkpoint of the run differs alike: an older one will not help
            raise CheckpointError(
                f"checkpoint {path} holds {difference}; it "
                f"was written by another config or flaxgen version: resume with that one, or "
                f"train in a fresh --workdir")
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as error:  # orbax/tensorstore raise many types for damaged files
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(
                f"checkpoint {path} cannot be restored ({type(error).__name__}: {message[:200]}); "
                f"move that directory away to resume from the previous checkpoint, or train in a "
                f"fresh --workdir") from None
        return restored.state, restored.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# each part of a TrainState, in the order a difference is looked for, with whose it is
_STATE_PARTS = {"params": ("parameters", "this model"),
                "opt_state": ("optimizer state", "this run's optimizer"),
                "extra": ("training extras", "this run"), "step": ("step counter", "this run")}


def state_difference(state_directory: Path, abstract_state) -> str | None:
    """The first difference between the train state stored in a checkpoint and `abstract_state`
    (parameters before optimizer state; names, then shapes), e.g. "other parameters than this
    model (...)", or None where they agree or the stored metadata cannot be read."""
    try:
        with ocp.StandardCheckpointer() as reader:
            stored = reader.metadata(state_directory).item_metadata.tree
    except Exception:   # damaged or not ours: the caller's own message says what to do
        return None
    model = {field.name: getattr(abstract_state, field.name)
             for field in dataclasses.fields(abstract_state)}
    for field, (part, whose) in _STATE_PARTS.items():
        try:
            detail = _shape_difference(_leaf_shapes(stored.get(field)), _leaf_shapes(model.get(field)))
        except TypeError:   # a stored tree of a kind we do not know: no claim about it
            return None
        if detail:
            return f"other {part} than {whose} ({detail})"
    return None


def _leaf_shapes(tree, path: str = "") -> dict[str, tuple]:
    """{path: shape} of a pytree, spelled alike for live states (named tuples, dataclasses) and
    for orbax's stored metadata (dicts and lists)."""
    if tree is None:
        return {}
    if hasattr(tree, "shape"):   # an array, its abstract struct, or orbax's metadata of one
        return {path: tuple(tree.shape)}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        tree = {field.name: getattr(tree, field.name) for field in dataclasses.fields(tree)}
    elif hasattr(tree, "_fields"):   # optax's states are named tuples
        tree = tree._asdict()
    if isinstance(tree, dict):
        children = ((f"{path}[{key!r}]", child) for key, child in tree.items())
    elif isinstance(tree, (list, tuple)):
        children = ((f"{path}[{index}]", child) for index, child in enumerate(tree))
    else:
        raise TypeError(f"no shape for {path}: {type(tree).__name__}")
    return {name: shape for child_path, child in children
            for name, shape in _leaf_shapes(child, child_path).items()}


def _shape_difference(stored: dict, model: dict) -> str | None:
    only_stored = sorted(stored.keys() - model.keys())
    only_model = sorted(model.keys() - stored.keys())
    if only_stored or only_model:
        said = [f"{len(names)} only in {where}, e.g. {names[0]}"
                for names, where in ((only_stored, "the checkpoint"), (only_model, "this run"))
                if names]
        return "; ".join(said)
    for name, shape in stored.items():
        if model[name] != shape:
            return f"{name} is {shape} in the checkpoint and {model[name]} in this run"
    return None


def abstract_like(state, device=None):
    """Shape/dtype structs of `state` placed on one device, for restoring."""
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


# Orbax logs every save at INFO; keep the training output readable.
logging.getLogger("absl").setLevel(logging.WARNING)
