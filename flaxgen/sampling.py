"""`flaxgen sample`: load a workdir, draw samples, write them where they belong."""
from __future__ import annotations

import inspect
import sys

import jax
import numpy as np

from flaxgen.config import load_saved_config
from flaxgen.training import rng


def sample_to_outputs(args) -> str:
    from flaxgen.training.loop import restore_state

    config = load_saved_config(args.workdir)
    experiment, state, step = restore_state(args.workdir, config, need_data=False)
    seed = config.seed if args.seed is None else args.seed
    key = rng.stream(seed, "sample")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    options = {name: getattr(args, name) for name in
               ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "stop")
               if getattr(args, name, None) is not None}
    accepted = inspect.signature(experiment.family.sample).parameters
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise ValueError(f"{experiment.family.name} models take no --{unknown[0].replace('_', '-')}")
    if "workdir" in accepted:
        options["workdir"] = args.workdir
    timings = {} if "timings" in accepted else None
    if timings is not None:
        options["timings"] = timings
    outputs = experiment.family.sample(state, key, args.n, **options)
    if timings:
        print(f"decoded {timings['decoded_tokens']} tokens ({args.n} x "
              f"{timings['decoded_tokens'] // args.n}) in {timings['decode_s']:.3f} s: "
              f"{timings['decoded_tokens'] / timings['decode_s']:.0f} tokens/s "
              f"(compile {timings['compile_s']:.1f} s apart)", file=sys.stderr)
    if isinstance(outputs, (list, str)):
        return "\n".join(outputs) if isinstance(outputs, list) else outputs
    outputs = np.asarray(jax.device_get(outputs))
    out = args.out or f"{args.workdir}/samples.png"
    from flaxgen import viz

    if outputs.ndim == 2 and outputs.shape[1] == 2:
        centers = np.asarray(experiment.source.info.get("centers", np.zeros((0, 2))))
        viz.scatter_2d(outputs, centers, out, title=f"{args.n} samples, step {step}")
    else:
        viz.save_grid(outputs, out)
    return f"wrote {args.n} samples (step {step}) to {out}"
