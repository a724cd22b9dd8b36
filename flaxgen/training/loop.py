"""The one training loop. It knows the family contract (flaxgen.models.Family) and the data
contract (flaxgen.data.DataSource), never which model it is training."""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from flaxgen.config import Config, ConfigError, optimizer_sections, save_config, xla_cpu_options
from flaxgen.data import make_source
from flaxgen.models import make_family
from flaxgen.training import parallel, rng
from flaxgen.training.checkpoint import Checkpointer, abstract_like
from flaxgen.training.logging import MetricsLog


class TrainingDiverged(RuntimeError):
    """A metric became NaN or Inf."""


def split_batch(config: Config) -> tuple[parallel.Strategy, Config]:
    """The run's strategy and the config it executes (`run_config`), once the batch is known to
    divide across the devices and into every optimizer section's micro-batches."""
    strategy = parallel.make_strategy(config.parallel.strategy, config.parallel.num_devices,
                                      config.data.batch_size)
    per_device = config.data.batch_size // strategy.num_devices
    config = run_config(config, per_device, strategy.devices[0].platform)
    for name in optimizer_sections(config):
        if per_device % config[name].accum_steps:
            raise ConfigError(f"per-device batch {per_device} does not divide into "
                              f"{name}.accum_steps={config[name].accum_steps} micro-batches")
    return strategy, config


def checked_plan(config: Config) -> tuple[parallel.Strategy, Config]:
    """`split_batch`, then the CPU compiler options tried on a one-op program: everything in the
    config that XLA would refuse, found before the data loads and the model compiles."""
    strategy, config = split_batch(config)
    _check_compiler_options(tuple(step_compiler_options(strategy, config).items()))
    return strategy, config


def step_compiler_options(strategy: parallel.Strategy, config: Config) -> dict[str, str]:
    """The train step's compiler options: `train.xla_cpu_options` on CPUs, none elsewhere."""
    return xla_cpu_options(config) if strategy.devices[0].platform == "cpu" else {}


def run_config(config: Config, per_device: int, platform: str) -> Config:
    """A copy of `config` with each optimizer section's `cpu_micro_batch` turned into its
    accum_steps: on a CPU, a per-device batch larger than it runs as micro-batches of that size
    (the same gradient, faster where the smaller work stays in cache: benchmarks/README.md,
    item 6); elsewhere, or where the batch is no larger, whole."""
    config = copy.deepcopy(config)
    for name in optimizer_sections(config):
        section = config[name]
        size, section.cpu_micro_batch = section.cpu_micro_batch, None
        if size is None or platform != "cpu" or per_device <= size:
            continue
        if per_device % size:
            raise ConfigError(f"per-device batch {per_device} does not divide into micro-batches of "
                              f"{name}.cpu_micro_batch={size}; use a data.batch_size whose per-device "
                              f"share is a multiple of {size}, or set {name}.cpu_micro_batch=None")
        section.accum_steps = per_device // size
    return config


@dataclass
class Experiment:
    """What a run is made of, built without compiling anything (so bad input fails fast)."""

    config: Config      # the run config: cpu_micro_batch resolved for the strategy's devices
    source: object
    family: object
    strategy: parallel.Strategy

    @classmethod
    def build(cls, config: Config, data_metadata: dict | None = None) -> "Experiment":
        """`data_metadata` (a workdir's data.json) builds the model without its dataset."""
        strategy, config = checked_plan(config)
        source = make_source(config, data_metadata)
        family = make_family(config, source.info)
        return cls(config, source, family, strategy)

    def init_state(self):
        key = rng.stream(self.config.seed, "init")
        return jax.jit(self.family.init)(key, self.source.example_batch())

    def step_function(self):
        """fused(state, (arrays, epoch_inputs, train_key), step, report) -> (state, metrics):
        builds the step's batch on device, derives the step's key, runs the family's step.
        `report` (a bool) says whether the metrics will be read; see `reports_metrics`."""
        source, family, strategy = self.source, self.family, self.strategy
        global_batch = source.batch_size

        def fused(state, args, step, report):
            arrays, epoch_inputs, train_key_data = args
            local = global_batch // parallel.num_replicas()
            batch = source.batch(arrays, epoch_inputs, step, parallel.example_indices(local))
            batch = strategy.constrain_batch(batch)
            key = rng.step_key(jax.random.wrap_key_data(train_key_data), step)
            return family.train_step(state, batch, key, report)

        return strategy.wrap(fused)

    def step_args(self, step: int):
        """(arrays, epoch inputs, train key) placed for the strategy: the step's second argument."""
        train_key = jax.random.key_data(rng.stream(self.config.seed, "train"))
        return (self.strategy.put_replicated(self.source.arrays),
                self.strategy.put_replicated(self.source.epoch_inputs(step)),
                self.strategy.put_replicated(train_key))

    def compile_step(self, state, args, step: int):
        """The step compiled ahead of time for these placed inputs, and the seconds it took."""
        start = time.perf_counter()
        lowered = self.step_function().lower(state, args, np.int32(step), np.bool_(True))
        options = step_compiler_options(self.strategy, self.config)
        with _options_named_in_errors(options):
            compiled = lowered.compile(compiler_options=options or None)
        return compiled, time.perf_counter() - start


@contextlib.contextmanager
def _options_named_in_errors(options: dict):
    """An option XLA refuses (unknown name, bad value) as a one-line ConfigError naming the key."""
    try:
        yield
    except jax.errors.JaxRuntimeError as error:
        if options and ("While setting option" in str(error) or "compile option" in str(error)):
            raise ConfigError(f"config key 'train.xla_cpu_options': {str(error).splitlines()[0].rstrip('.')}; "
                              f"fix or drop that option") from None
        raise


@functools.lru_cache(maxsize=None)
def _check_compiler_options(options: tuple[tuple[str, str], ...]) -> None:
    """XLA checks option names and values only when it compiles: a one-op program finds a bad
    one in milliseconds, once per set of options (the bench checks every case, then builds it)."""
    if options:
        with _options_named_in_errors(dict(options)):
            jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=dict(options))


def reports_metrics(steps_done: int, config: Config) -> bool:
    """Whether the loop logs the metrics of the step that brings the count to `steps_done` (it
    also reads them before every checkpoint and evaluation, and at the end)."""
    return steps_done % config.log.every == 0


def train(config: Config, workdir) -> dict:
    """Train (or resume) in `workdir`. Returns the final state (one copy, on host) and figures."""
    workdir = Path(workdir)
    experiment = Experiment.build(config)
    source, family, strategy = experiment.source, experiment.family, experiment.strategy
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / "config.json")
    (workdir / "data.json").write_text(json.dumps(source.metadata()) + "\n")

    state = experiment.init_state()
    checkpoints = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                               use_async=config.checkpoint["async"])
    start = 0
    latest = checkpoints.latest_step()
    if latest is not None:
        state, meta = checkpoints.restore(latest, abstract_like(state))
        start = int(meta["step"])
        print(f"resuming from {checkpoints.directory / str(latest)} at step {start}", flush=True)
    total = config.train.steps
    log = MetricsLog(workdir, total, start, config.log.tensorboard, config.log.progress)

    state = strategy.put_state(state)
    args = experiment.step_args(start)
    step_fn, compile_s = experiment.compile_step(state, args, start)
    print(f"compiled the train step in {compile_s:.2f}s ({strategy.name}, "
          f"{strategy.num_devices} device(s)); training steps {start}..{total}", flush=True)

    eval_key = rng.stream(config.seed, "eval")
    eval_fn = jax.jit(family.eval_step)
    current_inputs = source.epoch_inputs(start)
    pending = None            # (step, metrics on device): fetched after the next step is dispatched
    limit_in_flight = strategy.dispatch_limiter()
    last_log = (start, time.perf_counter())
    last_metrics = {}
    deadline = time.perf_counter() + config.train.time_limit_s if config.train.time_limit_s else None
    step = start

    def fetch(step_done, metrics):
        nonlocal last_log, last_metrics
        values = {k: float(v) for k, v in jax.device_get(strategy.one_copy(metrics)).items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            good = checkpoints.latest_step()
            raise TrainingDiverged(
                f"{', '.join(bad)} became {values[bad[0]]} at step {step_done}; lower optim.lr or set "
                f"optim.grad_clip (last good checkpoint: step {good} in {checkpoints.directory})")
        now = time.perf_counter()
        values["steps_per_s"] = (step_done - last_log[0]) / max(now - last_log[1], 1e-9)
        last_log = (step_done, now)
        last_metrics = values
        log.write(step_done, values)

    try:
        while step < total:
            inputs = source.epoch_inputs(step)
            if inputs is not current_inputs:  # a new epoch's shuffle order
                args = (args[0], strategy.put_replicated(inputs), args[2])
                current_inputs = inputs
            # decided before dispatch: the step computes its diagnostics only if they will be read
            done = step + 1
            out_of_time = deadline is not None and time.perf_counter() > deadline
            last = done == total or out_of_time
            checkpoint_now = done % config.checkpoint.every == 0 or last
            evaluate_now = done % config.eval.every == 0 or last
            # never checkpoint or evaluate a diverged state: check this step's metrics first
            sync_now = checkpoint_now or evaluate_now
            report = reports_metrics(done, config) or sync_now
            state, metrics = step_fn(state, args, np.int32(step), np.bool_(report))
            limit_in_flight(metrics)
            step = done
            if pending is not None:
                fetch(*pending)
                pending = None
            if report:
                pending = (step, metrics)
            if sync_now:
                fetch(*pending)
                pending = None
            if evaluate_now:
                eval_state = jax.device_put(strategy.one_copy(state), strategy.devices[0])
                run_eval(config, family, source, eval_state, eval_fn, jax.random.fold_in(eval_key, step),
                         step, workdir, log)
            if checkpoint_now:
                checkpoints.save(step, strategy.one_copy(state), {"step": step})
            if out_of_time:
                print(f"stopping at step {step}: train.time_limit_s={config.train.time_limit_s} reached",
                      flush=True)
                break
    finally:
        checkpoints.close()
        log.close()
    final = jax.device_get(strategy.one_copy(state))
    if config.eval.pictures and (workdir / "metrics.jsonl").is_file():
        from flaxgen import viz
        viz.loss_curves(workdir / "metrics.jsonl", workdir / "loss_curves.png")
    return {"state": final, "step": step, "metrics": last_metrics, "compile_s": compile_s,
            "workdir": str(workdir)}


def run_eval(config, family, source, state, eval_fn, key, step, workdir, log) -> dict:
    from flaxgen.evaluation import mean_over_batches

    metrics = mean_over_batches(eval_fn, state, source, key, config)
    log.write(step, metrics, kind="eval")
    if config.eval.pictures and family.pictures is not None:
        family.pictures(state, source, key, Path(workdir) / "pictures", step)
    return metrics


def restore_state(workdir, config: Config | None = None, need_data: bool = True):
    """The latest checkpointed state of a workdir (one copy, on the first device). Without
    `need_data` the source is a stand-in built from the workdir's data.json, so no dataset is read."""
    from flaxgen.config import load_saved_config

    config = config or load_saved_config(workdir)
    data_metadata = None
    if not need_data and (Path(workdir) / "data.json").is_file():
        data_metadata = json.loads((Path(workdir) / "data.json").read_text())
    experiment = Experiment.build(config, data_metadata)
    abstract = jax.eval_shape(experiment.family.init, rng.stream(config.seed, "init"),
                              experiment.source.example_batch())
    checkpoints = Checkpointer(Path(workdir) / "checkpoints", use_async=False)
    latest = checkpoints.latest_step()
    if latest is None:
        from flaxgen.training.checkpoint import CheckpointError
        raise CheckpointError(f"no checkpoint in {Path(workdir) / 'checkpoints'}; run flaxgen train "
                              f"--workdir {workdir} first")
    state, _ = checkpoints.restore(latest, abstract_like(abstract))
    checkpoints.close()
    return experiment, state, latest
