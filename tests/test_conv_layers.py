"""benchmarks/conv_layers.py: each convolution of a bench case alone, against a peer's same layer."""
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import conv_layers
from benchmarks.conv_layers import ConvLayer
from flaxgen import bench

REPO = str(Path(__file__).resolve().parents[1])


def test_the_layers_are_read_from_the_model_in_the_order_it_calls_them():
    assert [layer.label() for layer in conv_layers.conv_layers_of("conv_vae", 8)] == [
        "VAE/encoder/Conv2D_0 conv 28x28x1->32 k3x3 s2",
        "VAE/encoder/Conv2D_1 conv 14x14x32->64 k3x3 s2",
        "VAE/decoder/Conv2D_0 conv transpose 7x7x64->64 k3x3 s2",
        "VAE/decoder/Conv2D_1 conv transpose 14x14x64->32 k3x3 s2",
        "VAE/decoder/Conv2D_2 conv transpose 28x28x32->1 k3x3 s1"]
    dcgan = conv_layers.conv_layers_of("dcgan", 8)
    assert [layer.label() for layer in dcgan] == [
        "DCGenerator/Conv2D_0 conv transpose 7x7x64->32 k4x4 s2",
        "DCGenerator/Conv2D_1 conv transpose 14x14x32->1 k4x4 s2",
        "DCDiscriminator/Conv2D_0 conv 28x28x1->32 k4x4 s2",
        "DCDiscriminator/Conv2D_1 conv 14x14x32->64 k4x4 s2"]
    # only a layer that reads the data is timed without its input's gradient
    assert [layer.input_gradient for layer in dcgan] == [True, True, False, True]
    # and timed as each case's step compiles: the DCGAN with YNNPACK for its dots alone
    assert conv_layers.compiler_options_of("dcgan", 64) == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    assert conv_layers.compiler_options_of("conv_vae", 128) == {}
    with pytest.raises(SystemExit, match="no convolution"):
        conv_layers.conv_layers_of("gan", 8)


@pytest.mark.parametrize("input_gradient", [True, False])
def test_a_layer_step_over_micro_batches_gives_the_whole_batchs_gradients(input_gradient):
    layer = ConvLayer("toy", (7, 7, 8), 4, (3, 3), 2, True, input_gradient)
    (param_grads, input_grads), _ = _run(*conv_layers.layer_step(layer, 8, 2))
    (whole_grads, whole_input), (params, inputs, output_gradient) = _run(*conv_layers.layer_step(layer, 8, 1))
    assert output_gradient.shape == (8, 14, 14, 4)
    for split, whole in zip(jax.tree.leaves(param_grads), jax.tree.leaves(whole_grads)):
        np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-4)
    if input_gradient:
        np.testing.assert_allclose(input_grads.reshape(8, 7, 7, 8), whole_input[0], rtol=1e-5, atol=1e-5)
    # and they are the gradients of the layer (bias, ReLU) from the given output gradient
    expected_params, expected_input = jax.vjp(lambda p, x: jax.nn.relu(_apply(layer, p, x)),
                                              params, inputs)[1](output_gradient)
    for ours, expected in zip(jax.tree.leaves(whole_grads), jax.tree.leaves(expected_params)):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    if input_gradient:
        np.testing.assert_allclose(whole_input[0], expected_input, rtol=1e-5, atol=1e-5)
    else:
        assert input_grads is None and whole_input is None


def _run(step, args):
    return step(*args), args


def _apply(layer, params, x):
    from flaxgen.models.layers import Conv2D

    return Conv2D(layer.features, layer.kernel, (layer.stride,) * 2, transpose=layer.transpose).apply(params, x)


def test_torch_padding_gives_our_sizes_for_every_layer_and_refuses_a_size_it_cannot_match():
    for model in ("conv_vae", "dcgan"):
        for layer in conv_layers.conv_layers_of(model, 8):
            size, kernel, stride = layer.in_shape[0], layer.kernel[0], layer.stride
            padding, output_padding = conv_layers.torch_padding(size, kernel, stride, layer.transpose)
            if layer.transpose:
                assert (size - 1) * stride - 2 * padding + kernel + output_padding == size * stride
            else:
                assert (size + 2 * padding - kernel) // stride + 1 == -(-size // stride)
    assert conv_layers.torch_padding(7, 3, 2, True) == (1, 1)
    # 'SAME' with an even kernel at stride 1 pads one side more: torch cannot
    with pytest.raises(ValueError, match="no symmetric padding that turns 5 into 5"):
        conv_layers.torch_padding(5, 2, 1, False)


def test_a_worker_for_an_unknown_framework_says_which_there_are():
    with pytest.raises(RuntimeError, match="no conv layer peer 'mxnet': use tensorflow or torch"):
        bench.PipedPeer([sys.executable, "-m", "benchmarks.conv_layers", "--worker", "mxnet",
                         '{"path": "toy"}', "8"], env={**os.environ, "PYTHONPATH": REPO})


def test_the_check_prints_every_layer_beside_its_peer_and_our_whole_step(monkeypatch, capsys, tmp_path):
    script = tmp_path / "toy_peer.py"
    script.write_text("import sys\nprint('ready toy', flush=True)\n"
                      "for line in sys.stdin:\n    print(0.002, flush=True)\n")
    monkeypatch.setattr(conv_layers, "peer", lambda framework, layer, batch: bench.PipedPeer(
        [sys.executable, str(script)]))
    conv_layers.main(["conv_vae", "8", "--peer", "torch", "--rounds", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("conv_vae b8: our step ")
    labels = [layer.label() for layer in conv_layers.conv_layers_of("conv_vae", 8)]
    assert [line.split(": ours")[0] for line in lines[1:6]] == labels
    assert all("; toy 2.00 ms: " in line for line in lines[1:6])
    assert lines[6].startswith("our layers together ")
