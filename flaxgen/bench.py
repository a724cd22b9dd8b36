"""`flaxgen bench`: training-step throughput and MFU of every family, on synthetic data.

Each case is the real training step (the loop's fused step: batch built on device, family step,
state donated), compiled ahead of time (compile time reported apart), warmed up, then timed in
repeats of N steps that each end in block_until_ready. Medians are quoted with their spread.
"""
from __future__ import annotations

import argparse
import atexit
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import numpy as np

from flaxgen import flops as flops_lib
from flaxgen import hostmem
from flaxgen.config import ConfigError, build_config, optimizer_sections

IMAGES = {"name": "synthetic_images", "image_shape": [28, 28, 1], "num_examples": 4096}

# `train.xla_cpu_options` of the cases whose recipes set them (benchmarks/README.md, items 11, 15, 25)
EIGEN_DOTS = ["xla_cpu_experimental_ynn_fusion_type="]    # YNNPACK gets nothing; dots run on Eigen
YNNPACK_DOTS_ONLY = ["xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"]

# name -> (raw config over the defaults, default batch sizes, peer batch)
MODELS = {
    "autoencoder": ({"model": {"family": "autoencoder", "code_dim": 32}, "data": IMAGES,
                     "train": {"xla_cpu_options": EIGEN_DOTS}}, [256, 1024]),
    # the Keras example's MLP VAE (784-512-2-512-784, grey-level pixels): like for like with its figure
    "vae": ({"model": {"family": "vae", "arch": "dense", "encoder_hidden": [512], "decoder_hidden": [512],
                       "latent_dim": 2}, "data": IMAGES}, [128, 512]),
    "conv_vae": ({"model": {"family": "vae", "arch": "conv", "latent_dim": 2}, "data": IMAGES,
                  "optim": {"cpu_micro_batch": 32}}, [128, 256]),
    "gan": ({"model": {"family": "gan", "arch": "dense"}, "data": IMAGES}, [64, 256]),
    "dcgan": ({"model": {"family": "gan", "arch": "dcgan", "latent_dim": 64, "dcgan_width": 32,
                         "r1_gamma": 1.0}, "data": IMAGES,
               "optim": {"cpu_micro_batch": 64}, "optim_d": {"cpu_micro_batch": 64},
               "train": {"xla_cpu_options": YNNPACK_DOTS_ONLY}},
              [64, 128]),
    "gpt_cpu": ({"model": {"family": "transformer", "n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 65},
                 "data": {"name": "synthetic_tokens", "block_size": 64, "vocab_size": 65, "num_examples": 100_000},
                 "optim": {"name": "adamw", "weight_decay": 0.1, "grad_clip": 1.0, "cpu_micro_batch": 6},
                 "train": {"xla_cpu_options": EIGEN_DOTS}},
                [12, 48]),
    "gpt2_small": ({"model": {"family": "transformer", "n_layer": 12, "n_head": 12, "d_model": 768,
                              "vocab_size": 50304, "dtype": "bfloat16"},
                    "data": {"name": "synthetic_tokens", "block_size": 1024, "vocab_size": 50257,
                             "num_examples": 1_000_000},
                    "optim": {"name": "adamw", "weight_decay": 0.1, "grad_clip": 1.0}}, [8, 16, 32]),
}
# `cpu_micro_batch`: on CPU these steps run as micro-batches of that size (gradients averaged:
# the same update). Measured on 2 cores: the conv VAE at batch 128 takes ~1.3x less time as
# 4 x 32, the GPT recipe at batch 12 ~1.15x less as 2 x 6, the DCGAN at batch 128 ~1.25x less as
# 2 x 64 (at batch 64, 2 x 32 is no faster); the dense models only lose (benchmarks/README.md).
# `xla_cpu_options`: the DCGAN gives YNNPACK its dots alone (1.04x, item 15); the GPT recipe and the
# autoencoder give it nothing, their dots run on Eigen (GPT 1.07-1.12x on an AVX2 Zen 3 and 1.02x on
# a Zen 4, autoencoder 1.08-1.10x and 1.14x: items 11 and 25). The case is what its recipe trains.
PRESETS = {
    "default": ["autoencoder", "vae", "conv_vae", "gan", "dcgan", "gpt_cpu"],
    "full": list(MODELS),
}


@dataclass
class Result:
    model: str
    strategy: str
    devices: int
    batch: int
    dtype: str
    compile_s: float
    step_ms_median: float
    step_ms_min: float
    step_ms_max: float
    steps_per_s: float
    examples_per_s: float
    tokens_per_s: float | None
    flops_per_step: float | None
    xla_flops_per_step: float | None
    achieved_tflops: float | None
    mfu: float | None
    peak_memory_mb: float | None
    repeats: int
    steps_per_repeat: int
    micro_batches: int = 1
    extra: dict = field(default_factory=dict)


def per_device_batch(batch: int, strategy: str, devices: int | None) -> int:
    return batch // (1 if strategy == "single" else devices or jax.local_device_count())


def micro_batches(model: str, batch: int, strategy: str, devices: int | None) -> int:
    """How many micro-batches a case's per-device batch runs as on this backend."""
    from flaxgen.training.loop import run_config

    config = case_config(model, batch, strategy, devices, None)
    return run_config(config, per_device_batch(batch, strategy, devices), jax.default_backend()).optim.accum_steps


def run_dtype(requested: str | None, platform: str) -> str:
    """The compute dtype of every case of a run: `--dtype` where given, else bfloat16 on GPUs and
    TPUs and float32 on CPU."""
    return requested or ("bfloat16" if platform in ("gpu", "tpu") else "float32")


def case_dtype(model: str, dtype: str | None) -> str:
    """The compute dtype a case runs in: `--dtype` where given, else the case's own (float32 but
    for GPT-2 124M, which is a bfloat16 recipe)."""
    return dtype or MODELS[model][0]["model"].get("dtype", "float32")


# Config keys that the bench's own flags set for every case.
KEYS_SET_BY_FLAGS = {"model.dtype": "--dtype", "data.batch_size": "--batch-sizes",
                     "parallel.strategy": "--strategy", "parallel.num_devices": "--devices"}


def check_overrides(overrides: Sequence[str]) -> None:
    for item in overrides:
        key = item.partition("=")[0]
        if key in KEYS_SET_BY_FLAGS:
            raise ConfigError(f"--set {key} would fight the bench's own flag; use {KEYS_SET_BY_FLAGS[key]}")


def case_config(model: str, batch: int, strategy: str, devices: int | None, dtype: str | None,
                overrides: Sequence[str] = ()):
    """A case's config; `overrides` (`--set a.b=v`) apply to it after the case's own keys. A case
    whose per-device batch does not divide into its `cpu_micro_batch`, or whose overrides name an
    accum_steps, runs its batch whole unless told."""
    raw = copy.deepcopy(MODELS[model][0])
    raw.setdefault("data", {})["batch_size"] = batch
    raw["parallel"] = {"strategy": strategy, "num_devices": devices}
    raw["log"] = {"tensorboard": False, "progress": False}
    raw["model"]["dtype"] = case_dtype(model, dtype)
    check_overrides(overrides)
    per_device = per_device_batch(batch, strategy, devices)
    names_accum_steps = any(item.partition("=")[0].endswith(".accum_steps") for item in overrides)
    for name, section in raw.items():
        size = section.get("cpu_micro_batch") if name.startswith("optim") else None
        if size and (names_accum_steps or per_device % size):
            section["cpu_micro_batch"] = None
    return build_config(raw, list(overrides))


def set_micro_batches(config, count: int) -> None:
    """Every player's gradient (a GAN has two optimizer sections) runs as `count` micro-batches."""
    for name in optimizer_sections(config):
        config[name].accum_steps, config[name].cpu_micro_batch = count, None


def time_case(model: str, batch: int, strategy: str = "single", devices: int | None = None,
              dtype: str | None = None, repeats: int = 5, target_repeat_s: float = 0.4,
              peak_flops: float | None = None, steps: int | None = None,
              overrides: Sequence[str] = ()) -> tuple[Result, callable]:
    """Build, compile and time one case. Returns the result and a function that times one more
    repeat (for interleaving with a peer); its `compiled` is the program it times."""
    from flaxgen.training.loop import Experiment, reports_metrics

    experiment = Experiment.build(case_config(model, batch, strategy, devices, dtype, overrides))
    config = experiment.config      # with the micro-batches this backend runs
    strategy_obj = experiment.strategy
    state = strategy_obj.put_state(experiment.init_state())
    args = experiment.step_args(0)
    compiled, compile_s = experiment.compile_step(state, args, 0)
    xla_flops = _xla_flops(compiled, strategy_obj)
    if config.optim.accum_steps > 1:
        # cost_analysis counts a loop body once; count the same step compiled as one batch.
        whole_config = copy.deepcopy(config)
        set_micro_batches(whole_config, 1)
        whole = Experiment.build(whole_config)
        whole_state = strategy_obj.put_state(whole.init_state())
        xla_flops = _xla_flops(whole.compile_step(whole_state, whole.step_args(0), 0)[0], strategy_obj)
        del whole_state

    box = {"state": state, "step": 0}

    def run(steps: int) -> float:
        state, step = box["state"], box["step"]
        limit_in_flight = strategy_obj.dispatch_limiter()
        begin = time.perf_counter()
        for i in range(steps):
            # the loop's cadence: diagnostics only on the steps it would log
            report = reports_metrics(step + i + 1, config)
            state, metrics = compiled(state, args, np.int32(step + i), np.bool_(report))
            limit_in_flight(metrics)
        jax.block_until_ready((state, metrics))
        elapsed = time.perf_counter() - begin
        box["state"], box["step"] = state, step + steps
        return elapsed / steps

    run.compiled = compiled
    run(2)  # warm-up
    one = run(3)
    steps = steps or max(1, int(round(target_repeat_s / max(one, 1e-6))))
    times = [run(steps) for _ in range(repeats)]
    family = experiment.family
    per_example = family.flops_per_example(True) if family.flops_per_example else None
    analytic = per_example * batch if per_example else None
    device = strategy_obj.devices[0]
    result = summarise(model, strategy_obj, batch, config, compile_s, times, steps, analytic, xla_flops,
                       family.tokens_per_example, peak_flops, device)
    return result, run


def summarise(model, strategy_obj, batch, config, compile_s, times, steps, analytic, xla_flops,
              tokens_per_example, peak_flops, device) -> Result:
    median = statistics.median(times)
    dtype = config.model.get("dtype", "float32")
    flops_per_step = analytic or xla_flops
    achieved = flops_per_step / median if flops_per_step else None
    # Host devices share the machine's cores, and the CPU probe measured all of them.
    devices_with_own_peak = 1 if device.platform == "cpu" else strategy_obj.num_devices
    total_peak = peak_flops * devices_with_own_peak if peak_flops else None
    return Result(
        model=model, strategy=strategy_obj.name, devices=strategy_obj.num_devices, batch=batch, dtype=dtype,
        compile_s=round(compile_s, 3), step_ms_median=median * 1e3, step_ms_min=min(times) * 1e3,
        step_ms_max=max(times) * 1e3, steps_per_s=1.0 / median, examples_per_s=batch / median,
        tokens_per_s=batch * tokens_per_example / median if tokens_per_example else None,
        flops_per_step=analytic, xla_flops_per_step=xla_flops,
        achieved_tflops=achieved / 1e12 if achieved else None,
        mfu=flops_lib.mfu(flops_per_step, median, total_peak) if flops_per_step else None,
        peak_memory_mb=_peak_memory_mb(device), repeats=len(times), steps_per_repeat=steps,
        micro_batches=config.optim.accum_steps)


def _xla_flops(compiled, strategy_obj) -> float | None:
    if strategy_obj.devices[0].platform == "gpu":
        # XLA:GPU counts only what it emits itself, not its cuBLAS and cuDNN calls: the same
        # GPT-2 124M step (14,015 GFLOP) read 40 to 1,475 GFLOP on an H100 as autotuning varied.
        return None
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    value = analysis.get("flops") if analysis else None
    if value is None:
        return None
    # Both pmap and jit over a mesh report one device's program (jax 0.10: a GPT step over 4
    # host devices counts a quarter of the single-device FLOPs); the table shows the whole step.
    return float(value) * strategy_obj.num_devices


def _peak_memory_mb(device) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (CPU)


def peaks_for(device, dtypes) -> dict[str, tuple[float | None, str]]:
    """{dtype: (peak FLOP/s or None, where it comes from)} for MFU. On CPU, one f32 matmul
    probe measured now serves every dtype; elsewhere, the spec sheet (flops.PEAK_FLOPS)."""
    if device.platform == "cpu":
        probe = flops_lib.measure_matmul_peak(device=device)
        return {dtype: (probe, "the machine's: the best f32 1024^3 matmul probe of this run, one before "
                               "each model and one at the end; host devices share it")
                for dtype in dtypes}
    precision = jax.config.jax_default_matmul_precision or "default"
    sheets = {"bfloat16": f"per device, {device.device_kind} bfloat16 spec sheet",
              "float32": f"per device, {device.device_kind} spec sheet for float32 matmuls "
                         f"at jax's {precision} precision"}
    peaks = {}
    for dtype in dtypes:
        peak = flops_lib.device_peak_flops(device, dtype)
        peaks[dtype] = (peak, sheets[dtype] if peak else
                        f"no {dtype} figure for {device.device_kind!r} in flaxgen/flops.py "
                        "PEAK_FLOPS; add its spec sheet's dense peak there to get MFU")
    return peaks


def best_peaks(peaks, remeasured):
    """The faster of two measurements per dtype: noise on a shared machine only slows a probe."""
    return {d: max(peaks[d], remeasured[d], key=lambda entry: entry[0] or 0.0) for d in peaks}


def summary_of(peaks) -> dict:
    """{dtype: {"tflops", "source"}}, as results.json keeps them."""
    return {d: {"tflops": peak / 1e12 if peak else None, "source": source} for d, (peak, source) in peaks.items()}


def describe_peaks(peaks) -> str:
    """One line from {dtype: {"tflops", "source"}}, as results.json keeps them."""
    parts = []
    for dtype, peak in peaks.items():
        figure = f"{peak['tflops']:.3f} TFLOP/s" if peak["tflops"] else "unknown"
        parts.append(f"{dtype}: {figure} ({peak['source']})")
    return "; ".join(parts)


def format_table(results: list[Result]) -> str:
    header = (f"{'model':<12}{'strategy':<9}{'dev':>4}{'batch':>7}{'micro':>6}{'compile s':>10}{'ms/step':>10}"
              f"{'spread':>18}{'steps/s':>9}{'examples/s':>12}{'tokens/s':>10}{'GFLOP/step':>11}"
              f"{'xla GFLOP':>10}{'MFU':>7}{'peak MB':>9}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.model:<12}{r.strategy:<9}{r.devices:>4}{r.batch:>7}{r.micro_batches:>6}{r.compile_s:>10.2f}{r.step_ms_median:>10.2f}"
            f"{f'{r.step_ms_min:.2f}-{r.step_ms_max:.2f}':>18}{r.steps_per_s:>9.1f}{r.examples_per_s:>12.{0 if r.examples_per_s >= 100 else 2}f}"
            f"{(f'{r.tokens_per_s:.0f}' if r.tokens_per_s else '-'):>10}"
            f"{(f'{r.flops_per_step / 1e9:.3f}' if r.flops_per_step else '-'):>11}"
            f"{(f'{r.xla_flops_per_step / 1e9:.3f}' if r.xla_flops_per_step else '-'):>10}"
            f"{(f'{100 * r.mfu:.1f}%' if r.mfu else '-'):>7}"
            f"{(f'{r.peak_memory_mb:.0f}' if r.peak_memory_mb else '-'):>9}")
    return "\n".join(lines)


def device_label() -> str:
    """'nvidia_h100_80gb_hbm3-x1'; on CPU the cores and widest vector extension, 'cpu-2core-avx2'."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.device_kind.replace(' ', '_').lower()}-x{jax.device_count()}"
    vector = host_cpu()["vector"]
    return f"cpu-{_cpu_count()}core" + (f"-{vector.removesuffix('f')}" if vector else "")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# Widest vector extension first: XLA:CPU, MKL and oneDNN pick their kernels by it, so two hosts
# that both call themselves "AMD EPYC" (a Zen 4 with AVX-512, a Zen 3 with AVX2) time differently.
VECTOR_EXTENSIONS = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")


@functools.cache
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def host_cpu(cpuinfo: str | None = None) -> dict:
    """The host processor, as far as /proc/cpuinfo tells: its name, x86 family and model (which
    tell generations apart where the name does not), widest vector extension and usable cores."""
    fields = {}
    cpuinfo = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())   # the first processor's
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"name": fields.get("model name") or platform.processor() or platform.machine(),
            "family": fields.get("cpu family"), "model": fields.get("model"),
            "vector": next((extension for extension in VECTOR_EXTENSIONS if extension in flags), None),
            "cores": _cpu_count()}


def describe_host(host: dict) -> str:
    """'AMD EPYC (family 25, model 1), avx2, 2 cores'."""
    generation = f" (family {host['family']}, model {host['model']})" if host.get("family") else ""
    vector = f", {host['vector']}" if host.get("vector") else ""
    return f"{host['name']}{generation}{vector}, {host['cores']} cores"


def plot_sweep(results: list[Result], path: Path) -> None:
    from flaxgen.viz import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model in sorted({r.model for r in results}):
        rows = sorted((r for r in results if r.model == model and r.strategy == results[0].strategy),
                      key=lambda r: r.batch)
        if not rows:
            continue
        batches = [r.batch for r in rows]
        axes[0].plot(batches, [r.step_ms_median for r in rows], marker="o", label=model)
        axes[1].plot(batches, [r.examples_per_s for r in rows], marker="o", label=model)
    for axis, label in zip(axes, ["median ms / step", "examples / s"]):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("global batch")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"flaxgen training-step scaling ({device_label()})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results, peers, meta, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "results": [asdict(r) for r in results], "peers": peers}, indent=2) + "\n")
    plot_sweep(results, out_dir / "scaling.png")
    lines = [f"# flaxgen bench: {meta['device']}", "", f"Command: `{meta['command']}`", ""]
    if meta.get("host"):    # runs committed before 2026-12-07 did not record it
        lines += [f"Host: {describe_host(meta['host'])}.", ""]
    lines += [f"jax {meta['jax']}, {meta['backend']} backend, {meta['device_kind']}; peak for MFU, "
              f"{describe_peaks(meta['peaks'])}. malloc: {meta['malloc']} (flaxgen/hostmem.py).", "",
              "```", format_table(results), "```", "",
              "`micro`: the step runs its batch as that many micro-batches (a scan; the same "
              "gradient), on CPU only (benchmarks/README.md, item 6). A peer named `eager AxB` "
              "splits its batch the same way.", ""]
    if peers:
        lines += ["## Side by side with peers (interleaved A/B, same batch and dtype)", "",
                  f"flaxgen/peer: the median of the per-round ratios over {peers[0]['rounds']} rounds, "
                  "the middle half of them (IQR) and all of them (range) in brackets; best: the "
                  "ratio of each side's fastest round (benchmarks/README.md, item 23).", "",
                  "| model | batch | flaxgen ms/step | peer | peer ms/step | flaxgen/peer steps/s |",
                  "| --- | ---: | ---: | --- | ---: | ---: |"]
        for row in peers:
            lines.append(f"| {row['model']} | {row['batch']} | {row['flaxgen_ms']:.2f} | {row['peer']} | "
                         f"{row['peer_ms']:.2f} | {ratio_spread(row)} |")
        lines.append("")
    lines += ["![scaling](scaling.png)", ""]
    (out_dir / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser("flaxgen bench", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: the CPU-sized set (~3 min on 2 cores); full: adds GPT-2 124M")
    parser.add_argument("--models", help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--strategy", default="single", help="single, mesh, pmap, or all")
    parser.add_argument("--devices", type=int, default=None, help="devices for mesh/pmap (default all)")
    parser.add_argument("--batch-sizes", help="comma-separated global batches (default per model)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default: ~0.4 s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="compute dtype of every model (default: bfloat16 on GPUs and TPUs, float32 on CPU)")
    parser.add_argument("--peers", action="store_true", help="time the PyTorch peers side by side")
    parser.add_argument("--peer-repeats", type=int, default=21,
                        help="interleaved A/B rounds per peer (their per-round ratios' median is reported)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config override for every case, e.g. model.attention=xla or "
                             "optim.accum_steps=1 (repeatable)")
    parser.add_argument("--out", help="directory for results.json, README.md and scaling.png")
    args = parser.parse_args(argv)
    malloc = hostmem.keep_freed_memory()

    models = args.models.split(",") if args.models else PRESETS[args.preset]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown benchmark model {unknown[0]!r}; use some of: {', '.join(MODELS)}")
    if args.peers and args.overrides:
        raise ConfigError("--peers times fixed peer models that --set cannot change; run --set without --peers")
    strategies = ["single", "mesh", "pmap"] if args.strategy == "all" else args.strategy.split(",")
    for name in strategies:
        if name not in ("single", "mesh", "pmap"):
            raise ConfigError(f"unknown --strategy {name!r}; use single, mesh, pmap or all")
    if jax.device_count() == 1:
        strategies = [s for s in strategies if s == "single"] or ["single"]
    device = jax.devices()[0]
    dtype = run_dtype(args.dtype, device.platform)
    batches_of = {model: [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else MODELS[model][1]
                  for model in models}
    # every case's config and batch split checked before anything compiles
    from flaxgen.training.loop import checked_plan
    for model in models:
        for strategy in strategies:
            for batch in batches_of[model]:
                try:
                    checked_plan(case_config(model, batch, strategy, args.devices, dtype, args.overrides))
                except ConfigError as error:
                    raise ConfigError(f"bench case {model} batch {batch} ({strategy}): {error}") from None
    dtypes = [dtype]
    peaks = peaks_for(device, dtypes)
    host = host_cpu()
    print(f"flaxgen bench on {device_label()} ({device.device_kind}; host {describe_host(host)}); "
          f"MFU peak {describe_peaks(summary_of(peaks))}", flush=True)
    # A CPU probe is the machine's speed at one moment of a shared machine: probe again after each
    # model and at the end, and keep the best, which the final table and results.json use.
    results, peers = [], []
    for index, model in enumerate(models):
        if index and device.platform == "cpu":
            peaks = best_peaks(peaks, peaks_for(device, dtypes))
        batches = batches_of[model]
        peak = peaks[dtype][0]
        for strategy in strategies:
            for batch in batches:
                result, run = time_case(model, batch, strategy, args.devices, dtype, args.repeats,
                                        peak_flops=peak, steps=args.steps, overrides=args.overrides)
                results.append(result)
                print(format_table([result]).splitlines()[-1], flush=True)
                if args.peers and strategy == "single" and batch == batches[0]:
                    peers += _peer_side_by_side(model, batch, dtype, run, args.peer_repeats,
                                                result.micro_batches)
    if device.platform == "cpu":
        peaks = best_peaks(peaks, peaks_for(device, dtypes))
        for result in results:
            result.mfu = flops_lib.mfu(result.flops_per_step or result.xla_flops_per_step,
                                       result.step_ms_median / 1e3, peaks[result.dtype][0])
        print(f"\nMFU peak, best of {len(models) + 1} probes: {describe_peaks(summary_of(peaks))}")
    print()
    print(format_table(results))
    if peers:
        print()
        for row in peers:
            print(f"{row['model']:<10} batch {row['batch']:>4}: flaxgen {row['flaxgen_ms']:.2f} ms vs "
                  f"{row['peer']} {row['peer_ms']:.2f} ms -> {ratio_spread(row)}")
    if args.out:
        meta = {"device": device_label(), "device_kind": device.device_kind, "backend": device.platform,
                "jax": jax.__version__, "python": platform.python_version(),
                "command": "flaxgen bench " + " ".join(argv if argv is not None else sys.argv[2:]),
                "peaks": summary_of(peaks), "host": host,
                "malloc": malloc, "date": time.strftime("%Y-%m-%d")}
        write_report(results, peers, meta, Path(args.out))
        print(f"\nwrote {args.out}/results.json, README.md, scaling.png")
    return results


PEER_MODULES = ("torch_peers", "keras_peers")


def _peers_for(model, batch, dtype, micro_batches: int = 1) -> list:
    """[(name, run)] from every peer module that imports (each needs its framework installed).
    Peers run the batch whole, as their users write it, and where our case runs micro-batches
    also split the same way, so that both schedules are compared."""
    import importlib

    root = str(Path.cwd())   # benchmarks/ is a folder of the checkout, not an installed package
    if root not in sys.path:
        sys.path.insert(0, root)
    found = []
    for module_name in PEER_MODULES:
        try:
            module = importlib.import_module(f"benchmarks.peers.{module_name}")
        except ImportError as error:
            print(f"peers from {module_name} skipped: {error} (run from the repository root, with "
                  f"pip install 'flaxgen[peers]')", flush=True)
            continue
        try:
            found += module.make(model, batch, dtype, micro_batches)
        except (ImportError, RuntimeError) as error:
            print(f"peers from {module_name} skipped for {model}: {error}", flush=True)
    return found


# glibc's malloc hands buffers above its mmap threshold back to the kernel when freed, so a
# framework that frees and re-allocates large buffers every step (PyTorch on CPU) pays page faults
# for them every step (up to 27k a conv VAE step). PyTorch's CPU tuning advice is a caching malloc
# (jemalloc, tcmalloc); every peer starts with the glibc settings that do the same, as our own
# process runs with them (flaxgen/hostmem.py; benchmarks/README.md, items 20 and 24). A value set
# in the environment wins.
PEER_MALLOC_ENV = hostmem.ENVIRONMENT


class PipedPeer:
    """A peer in a process of its own, as its users run it: no peer shares our process's thread
    pools and libraries, and Keras can fix its backend at import. The worker
    (benchmarks/peers/worker.py) prints 'ready NAME' once built and compiled, then answers each
    line N on its stdin with the seconds per step of N more steps. Calling it runs N steps, like
    the run(steps) of our own case."""

    def __init__(self, command: list[str], env: dict | None = None):
        self._command = command
        self._stderr = tempfile.TemporaryFile(mode="w+")
        env = {**PEER_MALLOC_ENV, **(os.environ if env is None else env)}
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, text=True, env=env)
        atexit.register(self.close)
        first = self._answer()
        if not first.startswith("ready "):
            self.close()
            raise RuntimeError(f"peer worker {' '.join(command[1:])} said {first!r} instead of 'ready NAME'")
        self.name = first.removeprefix("ready ")

    def _answer(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            self._stderr.seek(0)
            said = [text for text in self._stderr.read().splitlines() if text.strip()]
            raise RuntimeError(f"peer worker {' '.join(self._command[1:])} exited with {code}: "
                               f"{said[-1] if said else 'no message'}")
        return line.strip()

    @property
    def pid(self) -> int:
        return self._process.pid

    def __call__(self, steps: int) -> float:
        self._process.stdin.write(f"{steps}\n")
        self._process.stdin.flush()
        return float(self._answer())

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()


def close_peer(run) -> None:
    """Free a peer's worker process now (a PipedPeer); an in-process run(steps) has none."""
    close = getattr(run, "close", None)
    if close is not None:
        close()


def ratio_spread(row: dict) -> str:
    """'1.06x (IQR 1.00-1.12, range 0.89-1.35; best 1.10x)' for a peer row."""
    return (f"{row['ratio_median']:.2f}x (IQR {row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}, "
            f"range {row['ratio_min']:.2f}-{row['ratio_max']:.2f}; best {row['ratio_of_best']:.2f}x)")


def _steps_lasting(run, seconds: float = 0.4) -> int:
    """How many steps of `run` (timed once over 2) take about `seconds`; at least 2."""
    return max(2, int(round(seconds / max(run(2), 1e-6))))


def timed_in_turn(run_a, steps_a, run_b, steps_b, rounds: int) -> tuple[list[float], list[float]]:
    """`rounds` pairs of repeats, a then b and b then a in alternate rounds, so that neither side
    always runs in the other's wake (threads still spinning, caches and clocks it left behind)."""
    times_a, times_b = [], []
    for index in range(rounds):
        if index % 2:
            times_b.append(run_b(steps_b))
            times_a.append(run_a(steps_a))
        else:
            times_a.append(run_a(steps_a))
            times_b.append(run_b(steps_b))
    return times_a, times_b


def step_ms(side: str, times: Sequence[float]) -> dict:
    """One side's repeats (seconds a step) as '{side}_ms', their median, and '{side}_ms_rounds',
    each in the order it ran, to tell drift from an outlier round (milliseconds a step)."""
    return {f"{side}_ms": statistics.median(times) * 1e3, f"{side}_ms_rounds": [t * 1e3 for t in times]}


def ratio_stats(ours: Sequence[float], theirs: Sequence[float]) -> dict:
    """The per-round ratios theirs/ours of interleaved repeats (our speed over the peer's): their
    median, quartiles and range; and the ratio of each side's best round. A busy neighbour on a
    shared host only ever adds time, and can slow both sides for several rounds in a row and one
    side more than the other; the best rounds are the two speeds with the least of it, a
    cross-check on a median that such a stretch has moved (benchmarks/README.md, item 23)."""
    ratios = sorted(t / o for o, t in zip(ours, theirs))
    quartile_1, _, quartile_3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"ratio_median": statistics.median(ratios), "ratio_q1": quartile_1, "ratio_q3": quartile_3,
            "ratio_min": ratios[0], "ratio_max": ratios[-1], "ratio_of_best": min(theirs) / min(ours)}


def _peer_side_by_side(model, batch, dtype, flaxgen_run, repeats, micro_batches=1) -> list[dict]:
    """A/B interleaved repeats of our step and each peer's; the ratio per pair."""
    rows = []
    for name, peer_run in _peers_for(model, batch, dtype, micro_batches):
        ours, theirs = timed_in_turn(flaxgen_run, _steps_lasting(flaxgen_run), peer_run,
                                     _steps_lasting(peer_run), repeats)
        close_peer(peer_run)
        rows.append({"model": model, "batch": batch, "peer": name, **step_ms("flaxgen", ours),
                     **step_ms("peer", theirs), **ratio_stats(ours, theirs), "rounds": repeats})
    return rows
