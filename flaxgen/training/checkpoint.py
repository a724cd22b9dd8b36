"""Orbax checkpoints of the train state plus a JSON record of the data position.

Orbax writes each checkpoint into a temporary directory and renames it when complete, and the
manager deletes old steps only after a new one is committed, so a crash mid-write never leaves a
half-written checkpoint in place of a good one.
"""
from __future__ import annotations

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
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as error:  # orbax/tensorstore raise many types for damaged files
            difference = parameter_difference(path / "state", abstract_state)
            if difference:
                # every checkpoint of the run has the same parameters: an older one will not help
                raise CheckpointError(
                    f"checkpoint {path} holds other parameters than this model ({difference}); it "
                    f"was written by another config or flaxgen version: resume with that one, or "
                    f"train in a fresh --workdir") from None
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


def parameter_difference(state_directory: Path, abstract_state) -> str | None:
    """The first difference between the parameters stored in a checkpoint's state and those of
    `abstract_state` (names, then shapes), or None where they agree or cannot be read."""
    try:
        with ocp.StandardCheckpointer() as reader:
            stored = reader.metadata(state_directory).item_metadata.tree["params"]
    except Exception:   # damaged or not ours: the caller's own message says what to do
        return None

    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}

    stored_shapes, model_shapes = shapes(stored), shapes(abstract_state.params)
    only_stored = sorted(stored_shapes.keys() - model_shapes.keys())
    only_model = sorted(model_shapes.keys() - stored_shapes.keys())
    if only_stored or only_model:
        said = [f"{len(names)} only {where}, e.g. {names[0]}"
                for names, where in ((only_stored, "there"), (only_model, "here")) if names]
        return "parameters " + "; ".join(said)
    for name, shape in stored_shapes.items():
        if model_shapes[name] != shape:
            return f"{name} is {shape} there and {model_shapes[name]} here"
    return None


def abstract_like(state, device=None):
    """Shape/dtype structs of `state` placed on one device, for restoring."""
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


# Orbax logs every save at INFO; keep the training output readable.
logging.getLogger("absl").setLevel(logging.WARNING)
