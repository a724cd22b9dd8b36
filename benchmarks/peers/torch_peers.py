"""The PyTorch peers (models in `torch_models.py`), each variant trained in a worker process
(`python -m benchmarks.peers.torch_peers MODEL BATCH DTYPE MICRO_BATCHES VARIANT`) that
`flaxgen bench` drives over a pipe, a repeat at a time, interleaved with ours. A torch user runs
torch in a process of its own; inside ours, beside XLA's thread pool and libraries, it timed
faster, for a reason not found (benchmarks/README.md, item 19)."""
from __future__ import annotations

import importlib.util
import sys

MODELS = ("gpt_cpu", "conv_vae", "dcgan")
# each variant: its torch.compile mode (None: eager), and whether it splits the batch as ours does
VARIANTS = {"eager": (None, False), "compile": ("default", False),
            "compile+cudagraphs": ("reduce-overhead", False), "eager split": (None, True)}


def variants(model: str, micro_batches: int, cuda: bool) -> list[str]:
    """Eager and torch.compile on the whole batch, as torch users write it; on CUDA also
    torch.compile with CUDA graphs; where our step runs micro-batches, eager split the same way."""
    if model not in MODELS:
        return []
    found = ["eager", "compile"] + (["compile+cudagraphs"] if cuda else [])
    return found + (["eager split"] if micro_batches > 1 else [])


def make(model: str, batch: int, dtype: str = "float32", micro_batches: int = 1):
    """[(name, run)]: a started worker per variant. A variant that fails to build (torch.compile
    needs a C++ toolchain) is reported and left out."""
    if model not in MODELS:
        return []
    if importlib.util.find_spec("torch") is None:
        raise ImportError("the PyTorch peers need torch (pip install 'flaxgen[peers]')")
    import jax

    from flaxgen.bench import PipedPeer

    peers = []
    for variant in variants(model, micro_batches, cuda=jax.default_backend() == "gpu"):
        command = [sys.executable, "-m", "benchmarks.peers.torch_peers", model, str(batch), dtype,
                   str(micro_batches), variant]
        try:
            peer = PipedPeer(command)
        except RuntimeError as error:
            print(f"  torch {variant} failed for {model}: {error}", flush=True)
            continue
        peers.append((peer.name, peer))
    return peers


def _worker(model: str, batch: int, dtype: str, micro_batches: int, variant: str) -> None:
    from benchmarks.peers.worker import protocol_channel, serve

    channel = protocol_channel()
    if model not in MODELS or variant not in VARIANTS:
        sys.exit(f"no PyTorch peer {model!r} {variant!r}: the models are {', '.join(MODELS)}, "
                 f"the variants {', '.join(VARIANTS)}")
    try:
        from benchmarks.peers import torch_models

        name, run = torch_models.build(model, batch, dtype, micro_batches, variant)
    except Exception as error:   # one line for PipedPeer's message, not a traceback
        sys.stderr.write(f"{type(error).__name__}: {str(error).splitlines()[0][:160]}\n")
        sys.exit(1)
    serve(channel, name, run)


if __name__ == "__main__":
    model, batch, dtype, micro_batches, variant = sys.argv[1:6]
    _worker(model, int(batch), dtype, int(micro_batches), variant)
