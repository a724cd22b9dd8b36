"""`flaxgen train|eval|sample|bench|data`: argument parsing only; the work lives elsewhere."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _split_overrides(argv: list[str], parser: argparse.ArgumentParser):
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if item.startswith("--config."):
            overrides.append(item[len("--config."):])
        else:
            parser.error(f"unrecognized argument {item!r} (config overrides look like --config.optim.lr=3e-4)")
    return args, overrides


def _train(argv):
    parser = argparse.ArgumentParser("flaxgen train", description="Train (or resume) an experiment.")
    parser.add_argument("--config", required=True, help="a config file, e.g. configs/vae_mnist.py")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and pictures go here")
    args, overrides = _split_overrides(argv, parser)
    from flaxgen.config import load_config
    from flaxgen.training.loop import train

    result = train(load_config(args.config, overrides), args.workdir)
    print(json.dumps({"step": result["step"], **result["metrics"]}))


def _eval(argv):
    parser = argparse.ArgumentParser("flaxgen eval", description="Full test metrics of a workdir.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", help="JSON file (default WORKDIR/eval.json)")
    args, overrides = _split_overrides(argv, parser)
    from flaxgen.config import load_saved_config
    from flaxgen.training import rng
    from flaxgen.training.loop import restore_state

    config = load_saved_config(args.workdir, overrides)
    experiment, state, step = restore_state(args.workdir, config)
    metrics = experiment.family.evaluate(state, experiment.source, rng.stream(config.seed, "eval"))
    metrics = {"step": step, **metrics}
    out = Path(args.out or Path(args.workdir) / "eval.json")
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    for name, value in metrics.items():
        print(f"{name:>20}: {value:.4f}" if isinstance(value, float) else f"{name:>20}: {value}")
    print(f"wrote {out}")


def _sample(argv):
    parser = argparse.ArgumentParser("flaxgen sample", description="Sample from a trained workdir.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--n", type=int, default=64, help="number of samples")
    parser.add_argument("--out", help="PNG for images and 2-D points; text goes to stdout")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the config's)")
    parser.add_argument("--prompt", default=None, help="text models: the prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--stop", default=None,
                        help="text models: stop at this string (escapes like \\n are understood)")
    args = parser.parse_args(argv)
    if args.stop is not None:
        args.stop = args.stop.encode("utf-8").decode("unicode_escape")
    from flaxgen.sampling import sample_to_outputs

    print(sample_to_outputs(args))


def _bench(argv):
    from flaxgen import bench

    bench.main(argv)


def _data(argv):
    parser = argparse.ArgumentParser("flaxgen data", description="Dataset utilities.")
    sub = parser.add_subparsers(dest="action", required=True)
    prepare = sub.add_parser("prepare", help="build a TFDS dataset (online, or offline from raw files)")
    prepare.add_argument("name", help="mnist, fashion_mnist or tiny_shakespeare")
    prepare.add_argument("--manual-dir", help="directory of the raw files (offline build)")
    prepare.add_argument("--data-dir", help="where to build (default: $FLAXGEN_DATA_DIR or TFDS's)")
    args = parser.parse_args(argv)
    from flaxgen.data.tfds_io import prepare as prepare_dataset

    print(f"built {args.name} in {prepare_dataset(args.name, args.data_dir, args.manual_dir)}")


COMMANDS = {"train": _train, "eval": _eval, "sample": _sample, "bench": _bench, "data": _data}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: flaxgen {{{','.join(COMMANDS)}}} ...  (flaxgen COMMAND -h for help)",
              file=sys.stderr)
        return 2
    from flaxgen import hostmem
    from flaxgen.config import ConfigError
    from flaxgen.data.base import DataError
    from flaxgen.training.checkpoint import CheckpointError
    from flaxgen.training.loop import TrainingDiverged

    hostmem.keep_freed_memory()     # XLA:CPU's step buffers stop page-faulting (flaxgen/hostmem.py)
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ConfigError, DataError, CheckpointError, TrainingDiverged, ValueError) as error:
        print(f"flaxgen: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
