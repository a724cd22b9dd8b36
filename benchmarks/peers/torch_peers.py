"""The PyTorch peers (models in `torch_models.py`), each variant trained in a worker process
(`python -m benchmarks.peers.torch_peers MODEL BATCH DTYPE MICRO_BATCHES VARIANT DEVICE`) that
`flaxgen bench` drives over a pipe, a repeat at a time, interleaved with ours. A torch user runs
torch in a process of its own; inside ours it had timed faster, because our process's
heap spared it glibc's page faults, which every worker's malloc settings now spare it too
(`PEER_MALLOC_ENV` in flaxgen/bench.py; benchmarks/README.md, items 19 and 20)."""
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
    # torch on the device our step runs on: a GPU against torch on the host says nothing
    device_type = "cuda" if jax.default_backend() == "gpu" else "cpu"
    for variant in variants(model, micro_batches, cuda=device_type == "cuda"):
        command = [sys.executable, "-m", "benchmarks.peers.torch_peers", model, str(batch), dtype,
                   str(micro_batches), variant, device_type]
        try:
            peer = PipedPeer(command)
        except RuntimeError as error:
            print(f"  torch {variant} failed for {model}: {error}", flush=True)
            continue
        peers.append((peer.name, peer))
    return peers


def _worker(model: str, batch: int, dtype: str, micro_batches: int, variant: str, device_type: str) -> None:
    from benchmarks.peers.worker import protocol_channel, serve

    channel = protocol_channel()
    if model not in MODELS or variant not in VARIANTS or device_type not in ("cpu", "cuda"):
        sys.exit(f"no PyTorch peer {model!r} {variant!r} on {device_type!r}: the models are "
                 f"{', '.join(MODELS)}, the variants {', '.join(VARIANTS)}, the devices cpu and cuda")
    if variant == "compile+cudagraphs" and device_type != "cuda":
        sys.exit("the PyTorch peer 'compile+cudagraphs' needs device cuda: CUDA graphs are CUDA's")
    try:
        from benchmarks.peers import torch_models

        name, run = torch_models.build(model, batch, dtype, micro_batches, variant, device_type)
    except Exception as error:   # one line for PipedPeer's message, not a traceback
        first_line = (str(error).splitlines() or [""])[0]   # an error may have no message at all
        sys.stderr.write(f"{type(error).__name__}: {first_line[:160]}\n")
        sys.exit(1)
    serve(channel, name, run)


if __name__ == "__main__":
    model, batch, dtype, micro_batches, variant, device_type = sys.argv[1:7]
    _worker(model, int(batch), dtype, int(micro_batches), variant, device_type)
