"""Which of a model's convolutions is slower than a peer's, layer by layer?

`flaxgen bench --peers` compares whole steps. This times each convolution of a bench case alone,
forward and backward (bias and ReLU, then the gradients of the kernel, the bias and, but for a
layer reading the data, the input, from a fixed gradient of the output: what a layer costs inside
a step, with no loss of its own to add work that one framework fuses and another does not), ours
as the case's step runs it (the same micro-batches, `model.conv` formulation and XLA options)
against the same layer in TensorFlow (Keras layers under `tf.function`, NHWC) and in PyTorch
eager (NCHW), each peer in a worker process of its own, interleaved round by round as the bench
interleaves steps. The layers are read from the
model itself, so the list follows the code. It also prints our whole step beside the sum of our
layers: what the layers do not explain is the rest of the step.

    python -m benchmarks.conv_layers conv_vae 128 [--peer tensorflow|torch] [--rounds 15]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass

FRAMEWORKS = ("tensorflow", "torch")


@dataclass(frozen=True)
class ConvLayer:
    path: str                       # the module's place in the model, e.g. "VAE/decoder/Conv2D_1"
    in_shape: tuple[int, int, int]  # height, width, channels of one example
    features: int
    kernel: tuple[int, int]
    stride: int
    transpose: bool
    input_gradient: bool            # False for a layer that reads the data (its input needs none)

    def label(self) -> str:
        kind = "conv transpose" if self.transpose else "conv"
        (height, width, channels), (kh, kw) = self.in_shape, self.kernel
        return f"{self.path} {kind} {height}x{width}x{channels}->{self.features} k{kh}x{kw} s{self.stride}"


def conv_layers_of(model: str, batch: int) -> list[ConvLayer]:
    """The convolutions of a bench case's model, in the order its init calls them (each once)."""
    import flax.linen as nn
    import jax

    from flaxgen import bench
    from flaxgen.models.layers import Conv2D
    from flaxgen.training.loop import Experiment

    experiment = Experiment.build(bench.case_config(model, batch, "single", None, None))
    data_shapes = {tuple(leaf.shape[1:]) for leaf in jax.tree.leaves(experiment.source.example_batch())}
    found: dict[ConvLayer, ConvLayer] = {}    # ordered, and each layer once

    def record(call, args, kwargs, context):
        module = context.module
        if isinstance(module, Conv2D) and context.method_name == "__call__":
            in_shape = tuple(int(size) for size in args[0].shape[1:])
            root = module
            while isinstance(root.parent, nn.Module):
                root = root.parent
            layer = ConvLayer("/".join((type(root).__name__, *module.scope.path)), in_shape, module.features,
                              tuple(module.kernel_size), int(module.strides[0]), module.transpose,
                              input_gradient=in_shape not in data_shapes)
            found.setdefault(layer, layer)
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(experiment.family.init, jax.random.key(0), experiment.source.example_batch())
    if not found:
        raise SystemExit(f"bench case {model!r} has no convolution; the ones that do: conv_vae, dcgan")
    return list(found.values())


def compiler_options_of(model: str, batch: int) -> dict[str, str]:
    """The XLA options a bench case's step compiles with here (`train.xla_cpu_options` on CPU)."""
    from flaxgen import bench
    from flaxgen.training.loop import split_batch, step_compiler_options

    return step_compiler_options(*split_batch(bench.case_config(model, batch, "single", None, None)))


def layer_step(layer: ConvLayer, batch: int, micro_batches: int, compiler_options: dict | None = None):
    """(step, (params, inputs, output_gradient)): step(*args) computes the layer's gradients over
    `batch` examples from `output_gradient`, as a scan over `micro_batches` with the kernel and
    bias gradients summed, as our training steps do, compiled with the step's `compiler_options`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flaxgen.models.layers import Conv2D, conv_implementation

    conv = Conv2D(layer.features, layer.kernel, (layer.stride,) * 2, transpose=layer.transpose,
                  implementation=conv_implementation("auto"))
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.standard_normal((batch, *layer.in_shape), np.float32))
    params = conv.init(jax.random.key(0), inputs[:1])

    def forward(params, x):
        return jax.nn.relu(conv.apply(params, x))

    out_shape = jax.eval_shape(forward, params, inputs[:1]).shape[1:]
    output_gradient = jnp.asarray(rng.standard_normal((batch, *out_shape), np.float32))

    def gradients(params, x, cotangent):
        if layer.input_gradient:
            return jax.vjp(forward, params, x)[1](cotangent)
        return jax.vjp(lambda params: forward(params, x), params)[1](cotangent)[0], None

    def step(params, inputs, output_gradient):
        def body(total, chunk):
            param_grads, input_grad = gradients(params, *chunk)
            return jax.tree.map(jnp.add, total, param_grads), input_grad
        split = lambda array: array.reshape(micro_batches, batch // micro_batches, *array.shape[1:])
        return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (split(inputs), split(output_gradient)))

    args = (params, inputs, output_gradient)
    return jax.jit(step).lower(*args).compile(compiler_options or {}), args


def timed(step, args):
    """run(steps) -> seconds per step, ending in block_until_ready (as the bench's runs)."""
    import time

    import jax

    def run(steps: int) -> float:
        begin = time.perf_counter()
        for _ in range(steps):
            out = step(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - begin) / steps

    run(2)
    return run


def torch_padding(size: int, kernel: int, stride: int, transpose: bool) -> tuple[int, int]:
    """(padding, output_padding) that give torch's Conv2d / ConvTranspose2d the 'SAME' size of
    ours along an axis of `size`: ceil(size / stride), or size * stride for the transpose. torch
    pads both sides alike, which some sizes cannot match; those raise."""
    if transpose:
        padding = -(-(kernel - stride) // 2)
        output_padding = 2 * padding - (kernel - stride)
        made, wanted = (size - 1) * stride - 2 * padding + kernel + output_padding, size * stride
        fits = padding >= 0 and output_padding < stride
    else:
        padding, output_padding = (kernel - 1) // 2, 0
        made, wanted = (size + 2 * padding - kernel) // stride + 1, -(-size // stride)
        fits = True
    if not (fits and made == wanted):
        kind = "ConvTranspose2d" if transpose else "Conv2d"
        raise ValueError(f"torch's {kind} has no symmetric padding that turns {size} into {wanted} "
                         f"with kernel {kernel}, stride {stride}; time this layer with --peer tensorflow")
    return padding, output_padding


def peer(framework: str, layer: ConvLayer, batch: int):
    from flaxgen import bench

    return bench.PipedPeer([sys.executable, "-m", "benchmarks.conv_layers", "--worker", framework,
                            json.dumps(asdict(layer)), str(batch)])


def _worker(framework: str, layer_json: str, batch: int) -> None:
    """The peer's side: its framework's same layer, forward and backward from a fixed output
    gradient, over the whole batch."""
    import os
    import time

    import numpy as np

    from benchmarks.peers.worker import protocol_channel, serve

    channel = protocol_channel()
    if framework not in FRAMEWORKS:
        sys.exit(f"no conv layer peer {framework!r}: use {' or '.join(FRAMEWORKS)}")
    fields = json.loads(layer_json)
    layer = ConvLayer(**{**fields, "in_shape": tuple(fields["in_shape"]), "kernel": tuple(fields["kernel"])})
    rng = np.random.default_rng(0)
    if framework == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        make = tf.keras.layers.Conv2DTranspose if layer.transpose else tf.keras.layers.Conv2D
        conv = make(layer.features, layer.kernel, strides=layer.stride, padding="same", activation="relu")
        x = tf.constant(rng.standard_normal((batch, *layer.in_shape), np.float32))
        output_gradient = tf.constant(rng.standard_normal(conv(x).shape, np.float32))

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                if layer.input_gradient:
                    tape.watch(x)
                y = conv(x)
            return tape.gradient(y, ([x] if layer.input_gradient else []) + conv.trainable_variables,
                                 output_gradients=output_gradient)

        def finish(out):
            out[-1].numpy()
        name = f"tensorflow {tf.__version__}"
    else:
        import torch

        height, width, channels = layer.in_shape
        padding, output_padding = zip(*(torch_padding(size, kernel, layer.stride, layer.transpose)
                                        for size, kernel in zip((height, width), layer.kernel)))
        if layer.transpose:
            conv = torch.nn.ConvTranspose2d(channels, layer.features, layer.kernel, layer.stride, padding,
                                            output_padding=output_padding)
        else:
            conv = torch.nn.Conv2d(channels, layer.features, layer.kernel, layer.stride, padding)
        x = torch.from_numpy(rng.standard_normal((batch, channels, height, width), np.float32))
        x.requires_grad_(layer.input_gradient)
        wanted = ([x] if layer.input_gradient else []) + list(conv.parameters())
        with torch.no_grad():
            output_gradient = torch.from_numpy(rng.standard_normal(tuple(conv(x).shape), np.float32))

        def step(x):
            return torch.autograd.grad(torch.relu(conv(x)), wanted, grad_outputs=output_gradient)

        finish = lambda out: None     # eager CPU torch has finished when it returns
        name = f"torch {torch.__version__} eager"

    def run(steps: int) -> float:
        begin = time.perf_counter()
        for _ in range(steps):
            out = step(x)
        finish(out)
        return (time.perf_counter() - begin) / steps

    run(3)
    serve(channel, name, run)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2], int(argv[3]))
    from flaxgen import bench, hostmem

    parser = argparse.ArgumentParser("conv_layers", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(bench.MODELS))
    parser.add_argument("batch", type=int)
    parser.add_argument("--peer", choices=FRAMEWORKS, action="append",
                        help="the peer frameworks (repeatable; default: both)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    hostmem.keep_freed_memory()     # as the flaxgen command runs

    import jax
    if jax.default_backend() != "cpu":
        raise SystemExit(f"conv_layers compares float32 layers on CPU, where its peers run; jax runs on "
                         f"{jax.default_backend()} here (JAX_PLATFORMS=cpu runs it on the host)")
    layers = conv_layers_of(args.model, args.batch)
    micro = bench.micro_batches(args.model, args.batch, "single", None)
    options = compiler_options_of(args.model, args.batch)
    whole, _ = bench.time_case(args.model, args.batch, repeats=5)
    print(f"{args.model} b{args.batch}: our step {whole.step_ms_median:.2f} ms as {micro} micro-batch(es)",
          flush=True)
    ours_total = 0.0
    for layer in layers:
        ours = timed(*layer_step(layer, args.batch, micro, options))
        steps_ours = bench._steps_lasting(ours, 0.25)
        cells, interleaved = [], []
        for framework in args.peer or FRAMEWORKS:
            try:
                theirs = peer(framework, layer, args.batch)
            except RuntimeError as error:
                print(f"  {framework} skipped: {error}", flush=True)
                continue
            times_ours, times_peer = bench.timed_in_turn(ours, steps_ours, theirs,
                                                         bench._steps_lasting(theirs, 0.25), args.rounds)
            bench.close_peer(theirs)
            interleaved += times_ours
            stats = bench.ratio_stats(times_ours, times_peer)
            cells.append(f"{theirs.name} {statistics.median(times_peer) * 1e3:.2f} ms: {stats['ratio_median']:.2f}x "
                         f"(IQR {stats['ratio_q1']:.2f}-{stats['ratio_q3']:.2f})")
        # ours: the median of every repeat interleaved with a peer's, else of five of its own
        ours_ms = statistics.median(interleaved or [ours(steps_ours) for _ in range(5)]) * 1e3
        ours_total += ours_ms
        print(f"{layer.label()}: ours {ours_ms:.2f} ms" + "".join(f"; {cell}" for cell in cells), flush=True)
    print(f"our layers together {ours_total:.2f} ms of our {whole.step_ms_median:.2f} ms step "
          f"(ratios: our speed over the peer's, the median of {args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
