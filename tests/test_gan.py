import re

import jax
import jax.numpy as jnp
import pytest

from flaxgen.config import build_config
from flaxgen.data import make_source
from flaxgen.models import make_family
from flaxgen.training import rng
from flaxgen.training.loop import train
from helpers import run_python, tree_equal, tree_max_diff


def _ring_config(overrides=None, **model):
    return build_config({"model": {"family": "gan", "arch": "mlp2d", "latent_dim": 4, "mlp_width": 32,
                                   "mlp_depth": 2, "r1_gamma": 0.1, "ema_decay": 0.9, **model},
                         "data": {"name": "ring8", "batch_size": 16, "eval_batch_size": 100},
                         "train": {"steps": 20}, "eval": {"every": 1000, "batches": 1, "pictures": False},
                         "checkpoint": {"every": 10}, "log": {"every": 5, "progress": False}}, overrides)


def test_one_step_updates_both_players_and_the_ema():
    config = _ring_config(n_critic=2)
    source = make_source(config)
    family = make_family(config, source.info)
    batch = source.example_batch()
    state = family.init(rng.stream(0, "init"), batch)
    new_state, metrics = jax.jit(family.train_step)(state, batch, jax.random.key(0))
    assert set(metrics) >= {"d_loss", "g_loss", "r1", "d_real", "d_fake"}
    for player in ("g", "d"):
        assert not tree_equal(state.params[player], new_state.params[player])
    assert not tree_equal(state.extra["ema_g"], new_state.extra["ema_g"])
    # the Adam count of the discriminator moved twice (n_critic), the generator's once
    counts = lambda opt: [int(x) for x in jax.tree.leaves(opt) if jnp.ndim(x) == 0]
    assert max(counts(new_state.opt_state["d"])) == 2 and max(counts(new_state.opt_state["g"])) == 1
    points = family.sample(new_state, jax.random.key(1), 7)
    assert points.shape == (7, 2)


def test_gan_runs_through_the_loop_and_resumes_bitwise(tmp_path):
    full = train(_ring_config(), tmp_path / "full")
    train(_ring_config(["train.steps=10"]), tmp_path / "part")
    resumed = train(_ring_config(), tmp_path / "part")
    assert tree_equal(full["state"], resumed["state"])
    metrics = family_metrics(full, tmp_path / "full")
    assert {"modes_covered", "high_quality_pct", "mode_kl"} <= set(metrics)


def family_metrics(result, workdir):
    from flaxgen.training.loop import restore_state
    experiment, state, _ = restore_state(workdir)
    return experiment.family.evaluate(state, experiment.source, jax.random.key(0))


CODE = """
import json
from test_gan import _ring_config
from helpers import tree_max_diff
from flaxgen.training.loop import train
out = {}
for name, devices in [("single", 1), ("mesh", 8), ("pmap", 8)]:
    config = _ring_config()
    config.parallel.strategy, config.parallel.num_devices = name, devices
    config.log.tensorboard = False
    out[name] = train(config, f"{WORK}/{name}")["state"]
print(json.dumps({k: tree_max_diff(out["single"].params, v.params) for k, v in out.items()}))
"""


def test_gan_step_agrees_across_strategies(tmp_path):
    result = run_python(f"WORK = {str(tmp_path)!r}\n" + CODE, devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    assert max(differences.values()) < 1e-5, differences


SHARE_CODE = """
import json
from flaxgen import bench
from flaxgen.training.loop import Experiment
flops = {}
for strategy, devices in [("single", 1), ("mesh", 2)]:
    experiment = Experiment.build(bench.case_config("gan", 64, strategy, devices, None))
    state = experiment.strategy.put_state(experiment.init_state())
    compiled, _ = experiment.compile_step(state, experiment.step_args(0), 0)
    analysis = compiled.cost_analysis()
    flops[strategy] = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
print(json.dumps(flops))
"""


def test_each_device_of_a_mesh_computes_only_its_share_of_the_generators_batch():
    # latents come from the examples' indices: unsharded, XLA ran the generator's whole batch on
    # every device (0.9x of the single-device step's FLOPs per device on 2 devices, not 0.5x)
    result = run_python(SHARE_CODE, devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    flops = json.loads(result.stdout.strip().splitlines()[-1])
    assert flops["mesh"] < 0.6 * flops["single"], flops


def test_dcgan_step_is_the_same_with_matmul_or_lax_convolutions():
    # R1 differentiates the critic twice, through either convolution form
    outcome = {}
    for conv in ("gemm", "xla"):
        config = build_config({"model": {"family": "gan", "arch": "dcgan", "dcgan_width": 8, "latent_dim": 8,
                                         "r1_gamma": 1.0, "conv": conv},
                               "data": {"name": "synthetic_images", "image_shape": [28, 28, 1],
                                        "num_examples": 64, "batch_size": 8}})
        source = make_source(config)
        family = make_family(config, source.info)
        batch = next(source.eval_batches(8, 1))
        state = jax.jit(family.init)(rng.stream(0, "init"), batch)
        outcome[conv] = jax.jit(family.train_step)(state, batch, jax.random.key(1))
    # g_loss is taken after the critic's update, so it checks that update too
    (_, gemm_metrics), (_, xla_metrics) = outcome["gemm"], outcome["xla"]
    assert gemm_metrics["r1"] > 0
    for name, value in gemm_metrics.items():
        assert abs(float(xla_metrics[name]) - float(value)) < 1e-4 * max(1.0, abs(float(value))), name


def _dcgan_config(**optim):
    return build_config({"model": {"family": "gan", "arch": "dcgan", "dcgan_width": 8, "latent_dim": 8,
                                   "r1_gamma": 1.0},
                         "data": {"name": "synthetic_images", "image_shape": [28, 28, 1],
                                  "num_examples": 64, "batch_size": 8}, **optim})


def test_each_player_accumulates_its_gradient_over_micro_batches():
    # the critic in 4 micro-batches (R1 included), the generator in 2, with n_critic=2: the same
    # updates as the whole batch, because latents follow the examples' global indices
    outcome = {}
    for name, sections in [("whole", {}), ("micro", {"optim": {"accum_steps": 2}, "optim_d": {"accum_steps": 4}})]:
        config = _dcgan_config(**sections)
        config.model.n_critic = 2
        source = make_source(config)
        family = make_family(config, source.info)
        batch = next(source.eval_batches(8, 1))
        state = jax.jit(family.init)(rng.stream(0, "init"), batch)
        jaxpr = jax.make_jaxpr(family.train_step)(state, batch, jax.random.key(0)).jaxpr
        outcome[name + " scans"] = [eqn.params["length"] for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
        step = jax.jit(family.train_step)
        for i in range(3):
            state, metrics = step(state, batch, jax.random.key(i))
        outcome[name] = state, metrics
    assert outcome["whole scans"] == [] and outcome["micro scans"] == [4, 4, 2]
    (whole, whole_metrics), (micro, micro_metrics) = outcome["whole"], outcome["micro"]
    assert not tree_equal(whole.params, jax.jit(family.init)(rng.stream(0, "init"), batch).params)
    assert tree_max_diff(whole.params, micro.params) < 1e-5
    for name, value in whole_metrics.items():
        assert abs(float(micro_metrics[name]) - float(value)) < 1e-4 * max(1.0, abs(float(value))), name


@pytest.mark.parametrize("optim_d, message", [
    ({"name": "adamm"}, "config key 'optim_d.name' is 'adamm'; use one of: adam, adamw, sgd"),
    ({"accum_steps": 0}, "config key 'optim_d.accum_steps' must be a positive integer, got 0"),
    ({"accum_steps": 3}, "per-device batch 8 does not divide into optim_d.accum_steps=3 micro-batches"),
])
def test_the_critics_optimizer_section_is_checked_like_optim(optim_d, message):
    from flaxgen.config import ConfigError
    from flaxgen.training.loop import Experiment
    with pytest.raises(ConfigError, match=re.escape(message)):
        Experiment.build(_dcgan_config(optim_d=optim_d))
