import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from flaxgen.training.checkpoint import CheckpointError
from flaxgen.training.loop import TrainingDiverged, train
from helpers import REPO, run_python, tiny_config, tree_equal, tree_max_diff


def test_same_seed_twice_is_bitwise_identical_and_seed_matters(tmp_path, data_dir):
    first = train(tiny_config("vae"), tmp_path / "a")
    second = train(tiny_config("vae"), tmp_path / "b")
    other = train(tiny_config("vae", seed=1), tmp_path / "c")
    assert tree_equal(first["state"], second["state"])
    assert first["metrics"]["loss"] == second["metrics"]["loss"]
    assert not tree_equal(first["state"].params, other["state"].params)
    lines = lambda d: [{k: v for k, v in json.loads(l).items() if k not in ("time", "steps_per_s")}
                       for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert lines("a") == lines("b")


def test_workdir_holds_config_metrics_tensorboard_checkpoints(tmp_path, data_dir):
    train(tiny_config("vae", eval={"every": 10, "pictures": True}), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["latent_dim"] == 4
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
    assert (tmp_path / "pictures" / "samples_0000020.png").is_file()
    assert (tmp_path / "pictures" / "reconstructions_0000020.png").is_file()
    assert (tmp_path / "loss_curves.png").is_file()


def test_eval_and_checkpoint_steps_need_not_be_log_steps(tmp_path, data_dir):
    train(tiny_config("vae", log={"every": 7}, eval={"every": 10}, checkpoint={"every": 15}), tmp_path)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [7, 10, 14, 15, 20]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20]
    # every step whose metrics are read computed its gradient norm (others skip it)
    assert all(r["grad_norm"] > 0 for r in records if r["kind"] == "train")


def test_time_limit_stops_with_a_checkpoint_and_reported_metrics(tmp_path, data_dir):
    result = train(tiny_config("vae", train={"steps": 1000, "time_limit_s": 1e-9}), tmp_path)
    assert result["step"] == 1
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("eval", 1)]
    assert records[0]["grad_norm"] > 0
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]


def test_killed_run_resumes_bitwise(tmp_path, data_dir):
    """SIGKILL a training process after its 2nd checkpoint, resume, compare to a straight run."""
    total = 200
    killed = tmp_path / "killed"
    code = (f"from helpers import tiny_config\nfrom flaxgen.training.loop import train\n"
            f"train(tiny_config('vae', train={{'steps': 1_000_000}}, checkpoint={{'every': 20}}), "
            f"{str(killed)!r})\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    # stderr to a file: a pipe nobody reads would stall the child once it fills
    stderr_path = tmp_path / "killed-stderr.txt"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        committed = []
        deadline = time.time() + 300
        while len(committed) < 2 and time.time() < deadline and process.poll() is None:
            directory = killed / "checkpoints"
            committed = [p for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(committed) >= 2, stderr_path.read_text()[-2000:]

    resumed = train(tiny_config("vae", train={"steps": total}, checkpoint={"every": 20}), killed)
    straight = train(tiny_config("vae", train={"steps": total}, checkpoint={"every": 20}), tmp_path / "straight")
    resumed_from = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()][0]
    assert resumed["step"] == straight["step"] == total
    assert tree_equal(resumed["state"], straight["state"])
    assert resumed["metrics"]["loss"] == straight["metrics"]["loss"]
    steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == sorted(set(steps)), "a resumed run must not duplicate metric records"
    assert resumed_from["step"] == 5


STRATEGIES_CODE = """
import json, jax
from helpers import tiny_config, tree_max_diff
from flaxgen.training.loop import train
assert jax.device_count() == 8
runs = {}
for name, devices in [("single", 1), ("mesh", 1), ("mesh", 2), ("mesh", 8), ("pmap", 2), ("pmap", 8)]:
    config = tiny_config("vae", parallel={"strategy": name, "num_devices": devices},
                         log={"every": 20, "tensorboard": False})
    result = train(config, f"{WORK}/{name}{devices}")
    runs[f"{name}{devices}"] = result
reference = runs["single1"]
print(json.dumps({k: [tree_max_diff(reference["state"].params, r["state"].params),
                      abs(reference["metrics"]["loss"] - r["metrics"]["loss"])] for k, r in runs.items()}))
"""


def test_single_mesh_pmap_agree_on_1_2_8_devices(tmp_path, data_dir):
    result = run_python(f"WORK = {str(tmp_path)!r}\n" + STRATEGIES_CODE, devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(differences) == {"single1", "mesh1", "mesh2", "mesh8", "pmap2", "pmap8"}
    for name, (params, loss) in differences.items():
        assert params < 1e-5, (name, params)
        assert loss < 1e-3, (name, loss)


def test_batch_that_does_not_divide_is_a_clear_error_before_compiling(data_dir):
    code = ("from helpers import tiny_config\nfrom flaxgen.training.loop import train\n"
            "from flaxgen.config import ConfigError\n"
            "try:\n    train(tiny_config('vae', data={'batch_size': 12}, parallel={'strategy': 'pmap'}), '/nonexistent/x')\n"
            "except ConfigError as e:\n    print('ERR', e)\n")
    result = run_python(code, devices=8)
    assert "ERR global batch 12 does not divide across 8 devices" in result.stdout, result.stderr[-2000:]


def test_nan_stops_the_run_with_a_clear_message_and_no_bad_checkpoint(tmp_path, data_dir):
    with pytest.raises(TrainingDiverged, match="became nan at step 5; lower optim.lr"):
        train(tiny_config("vae", optim={"lr": float("nan")}), tmp_path)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_survives(tmp_path, data_dir):
    train(tiny_config("vae"), tmp_path)
    latest = tmp_path / "checkpoints" / "20"
    for path in (latest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="checkpoints/20 cannot be restored.*move that directory away"):
        train(tiny_config("vae", train={"steps": 30}), tmp_path)
    assert (tmp_path / "checkpoints" / "10").is_dir()
    latest.rename(tmp_path / "corrupt-20")
    resumed = train(tiny_config("vae", train={"steps": 20}), tmp_path)
    straight = train(tiny_config("vae", train={"steps": 20}), tmp_path / "straight")
    assert tree_equal(resumed["state"], straight["state"])


def test_a_checkpoint_of_other_parameters_says_which_and_not_to_go_back_a_checkpoint(tmp_path):
    import jax.numpy as jnp
    from flaxgen.training.checkpoint import Checkpointer, abstract_like
    from flaxgen.training.state import TrainState

    def state(params):
        return TrainState(step=jnp.int32(0), params=params, opt_state=(), extra=None)

    saved = {"GemmConv_0": {"kernel": jnp.ones((3, 3, 1, 8))}, "Dense_0": {"kernel": jnp.ones((8, 2))}}
    checkpoints = Checkpointer(tmp_path, use_async=False)
    checkpoints.save(5, state(saved), {"epoch": 0})
    checkpoints.wait()
    # parameters renamed, as a newer flaxgen might
    renamed = {"Conv2D_0": saved["GemmConv_0"], "Dense_0": saved["Dense_0"]}
    with pytest.raises(CheckpointError, match=r"^checkpoint \S+/5 holds other parameters than this model "
                       r"\(1 only in the checkpoint, e.g. \['GemmConv_0'\]\['kernel'\]; 1 only in this run, "
                       r"e\.g\. \['Conv2D_0'\]\['kernel'\]\); .*another config or flaxgen version"):
        checkpoints.restore(5, abstract_like(state(renamed)))
    wider = {**saved, "Dense_0": {"kernel": jnp.ones((8, 4))}}
    with pytest.raises(CheckpointError, match=r"\['Dense_0'\]\['kernel'\] is \(8, 2\) in the checkpoint and "
                       r"\(8, 4\) in this run"):
        checkpoints.restore(5, abstract_like(state(wider)))
    restored, meta = checkpoints.restore(5, abstract_like(state(saved)))
    assert meta == {"epoch": 0} and restored.params["Dense_0"]["kernel"].shape == (8, 2)
    checkpoints.close()


def test_resuming_with_another_optimizer_names_the_optimizer_state_not_a_damaged_file(tmp_path, data_dir):
    train(tiny_config("vae"), tmp_path)
    # the same model with clipping added: the parameters agree, Adam's state sits one level deeper
    with pytest.raises(CheckpointError, match=r"checkpoints/20 holds other optimizer state than this run's "
                       r"optimizer \(\d+ only in the checkpoint, e\.g\. \[0\]\[0\]\['count'\]; \d+ only in "
                       r"this run, e\.g\. \[1\]\[0\]\['count'\]\); .*resume with that one"):
        train(tiny_config("vae", optim={"grad_clip": 1.0}, train={"steps": 30}), tmp_path)
    assert (tmp_path / "checkpoints" / "20").is_dir()


def test_xla_cpu_options_reach_the_compiler_and_a_bad_one_names_the_key(data_dir):
    from flaxgen.config import ConfigError
    from flaxgen.training.loop import Experiment

    def compiled_text(options):
        experiment = Experiment.build(tiny_config("autoencoder", train={"xla_cpu_options": options}))
        state = experiment.strategy.put_state(experiment.init_state())
        return experiment.compile_step(state, experiment.step_args(0), 0)[0].as_text()

    assert '"__ynn_fusion"' in compiled_text([])
    # an empty fusion-type list turns YNNPACK off: none of its fusions may be left
    assert '"__ynn_fusion"' not in compiled_text(["xla_cpu_experimental_ynn_fusion_type="])
    for bad, named in (("xla_cpu_no_such_option=1", "xla_cpu_no_such_option"),
                       ("xla_cpu_enable_fast_math=maybe", "maybe")):
        # refused by Experiment.build, before the data loads and anything of the model compiles
        with pytest.raises(ConfigError, match=rf"^config key 'train.xla_cpu_options': .*{named}.*; "
                                              r"fix or drop that option$"):
            Experiment.build(tiny_config("autoencoder", train={"xla_cpu_options": [bad]}))


def test_gradient_accumulation_matches_the_big_batch(tmp_path, data_dir):
    whole = train(tiny_config("autoencoder", train={"steps": 5}), tmp_path / "whole")
    accumulated = train(tiny_config("autoencoder", train={"steps": 5}, optim={"accum_steps": 4}),
                        tmp_path / "accumulated")
    assert tree_max_diff(whole["state"].params, accumulated["state"].params) < 1e-5


LONG_UNSYNCED_CODE = """
import jax
from helpers import tiny_config
from flaxgen.training.loop import train
for name in ("mesh", "pmap"):
    # no log, eval or checkpoint until the end: only the loop's own bound keeps steps from piling up
    config = tiny_config("autoencoder", parallel={"strategy": name, "num_devices": 2},
                         train={"steps": 1500}, log={"every": 1500, "tensorboard": False},
                         eval={"every": 1500}, checkpoint={"every": 1500, "async": False})
    print("finished", name, train(config, f"{WORK}/{name}")["step"], flush=True)
"""


def test_many_queued_steps_on_host_devices_do_not_deadlock(tmp_path, data_dir):
    # XLA:CPU host devices hang in a cross-device all-reduce when hundreds of steps are queued
    # (then abort after 40 s); the loop keeps two in flight (Strategy.max_steps_in_flight).
    result = run_python(f"WORK = {str(tmp_path)!r}\n" + LONG_UNSYNCED_CODE, devices=2,
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    finished = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("finished")]
    assert finished == [["mesh", "1500"], ["pmap", "1500"]]


def test_dispatch_limiter_keeps_at_most_depth_steps_pending():
    from flaxgen.training.parallel import DispatchLimiter, make_strategy

    limiter = DispatchLimiter(2)
    for i in range(5):
        limiter({"loss": jax.numpy.float32(i)})
        assert len(limiter.pending) == min(i + 1, 2)
    unbounded = DispatchLimiter(None)
    unbounded({"loss": jax.numpy.float32(0)})
    assert not unbounded.pending
    # one device needs no bound: nothing waits for a rendezvous
    assert make_strategy("single", 1, 16).max_steps_in_flight is None
