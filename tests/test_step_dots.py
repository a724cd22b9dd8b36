"""benchmarks/step_dots.py: a bench case's matmuls, read from its compiled step and timed alone."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step_dots
from benchmarks.step_dots import Dot


def compiled_text(function, *args) -> str:
    return jax.jit(function).lower(*args).compile().as_text()


def test_each_dot_is_counted_as_often_as_the_program_runs_it():
    def f(x_8x16, w_16x16, q_2x3x4x5, k_2x3x5x6, y_8x4):
        def body(carry_8x16, _):     # the carry feeds the product: nothing to hoist
            return jnp.tanh(carry_8x16 @ w_16x16), None
        looped_8x16 = jax.lax.scan(body, x_8x16, None, length=3)[0]
        scores = jnp.einsum("bnth,bnhs->bnts", q_2x3x4x5, k_2x3x5x6)
        return looped_8x16, scores, x_8x16.T @ y_8x4

    args = [jnp.ones(shape) for shape in [(8, 16), (16, 16), (2, 3, 4, 5), (2, 3, 5, 6), (8, 4)]]
    counts = step_dots.dots_of(compiled_text(f, *args))
    by_flops = {dot.flops: times for dot, times in counts.items()}
    assert sum(counts.values()) == 5
    assert by_flops == {2 * 8 * 16 * 16: 3,              # the loop body, its trip count times
                        2 * (2 * 3) * 4 * 6 * 5: 1,      # the batched product
                        2 * 16 * 4 * 8: 1}               # xᵀ @ y contracts the 8 rows
    batched = next(dot for dot in counts if dot.batched)
    assert (batched.lhs, batched.rhs, batched.lhs_batch, batched.rhs_batch) == ((2, 3, 4, 5), (2, 3, 5, 6), (0, 1), (0, 1))
    assert batched.dtype == "f32"


def test_a_text_without_an_entry_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        step_dots.dots_of("HloModule nothing\n")


def test_the_common_factor_of_the_counts_becomes_the_passes():
    a, b = Dot("f32", (4, 8), (8, 2), (1,), (0,)), Dot("f32", (4, 8), (2, 8), (1,), (1,))
    dots, repeats = step_dots.one_pass({a: 4, b: 6})
    assert repeats == 2 and sorted(dots, key=str) == sorted([a, a, b, b, b], key=str)
    assert step_dots.one_pass({a: 3, b: 1}) == ([a, a, a, b], 1)


@pytest.mark.parametrize("dot", [
    Dot("f32", (6, 4), (4, 5), (1,), (0,)),                  # x @ w
    Dot("f32", (6, 4), (5, 4), (1,), (1,)),                  # g @ wᵀ
    Dot("f32", (6, 4), (6, 5), (0,), (0,)),                  # xᵀ @ g
    Dot("f32", (2, 3, 4, 5), (2, 3, 5, 6), (3,), (2,), (0, 1), (0, 1)),
    Dot("f32", (2, 3, 4, 5), (2, 3, 6, 5), (3,), (3,), (0, 1), (0, 1)),
    Dot("f32", (2, 3, 5, 4), (2, 3, 5, 6), (2,), (2,), (0, 1), (0, 1)),
])
def test_the_torch_side_computes_the_same_product_as_xlas_dot(dot):
    rng = np.random.default_rng(0)
    lhs, rhs = rng.standard_normal(dot.lhs), rng.standard_normal(dot.rhs)
    swap_lhs, swap_rhs = step_dots.torch_transposes(dot)
    # numpy's matmul has torch.matmul's semantics for these shapes
    ours = np.matmul(np.swapaxes(lhs, -1, -2) if swap_lhs else lhs, np.swapaxes(rhs, -1, -2) if swap_rhs else rhs)
    with jax.default_matmul_precision("highest"):
        xlas = jax.lax.dot_general(lhs, rhs, dot.dimension_numbers)
    np.testing.assert_allclose(ours, np.asarray(xlas), rtol=1e-5, atol=1e-5)
    assert dot.flops == 2 * np.prod(xlas.shape) * dot.lhs[dot.lhs_contracting[0]]


def test_a_dot_torch_matmul_cannot_express_is_named():
    with pytest.raises(ValueError, match="no plain form"):
        step_dots.torch_transposes(Dot("f32", (4, 5, 6), (5, 6, 7), (1, 2), (0, 1)))


def test_the_timed_program_must_run_every_counted_dot(monkeypatch):
    counts = {Dot("f32", (32, 16), (16, 8), (1,), (0,)): 4}     # 2 x 32 x 16 x 8 = 8192 FLOPs each
    assert step_dots.time_in_xla(counts, {}, rounds=2) > 0
    # a program in which XLA had hoisted or dropped products would be timed short: refused
    assert step_dots.time_warm_in_xla(counts, {}, rounds=2) > 0
    monkeypatch.setattr(step_dots, "dots_of", lambda text: {})
    with pytest.raises(RuntimeError, match=r"runs \(0, 0\) \(dots, FLOPs\), not \(4, 32768\)"):
        step_dots.time_in_xla(counts, {}, rounds=2)
    with pytest.raises(RuntimeError, match=r"runs \(0, 0\) \(dots, FLOPs\), not \(\d+, \d+\)"):
        step_dots.time_warm_in_xla(counts, {}, rounds=2)


def test_a_real_case_read_timed_and_written(tmp_path, capsys):
    out = tmp_path / "dots.json"
    row = step_dots.main(["vae", "16", "--rounds", "2", "--json", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("vae b16: step ") and printed[0].endswith("its dots alone:")
    count = str(sum(times for _, times in row["dots"]))
    assert printed[1].split()[:3] == ["XLA", "all", count]
    assert printed[2].split()[:4] == ["XLA", "all,", "warm", count]
    assert printed[-1].startswith("  the dots alone take ")
    assert json.loads(out.read_text()) == row
    # the MLP VAE's step: encoder, decoder, their gradients; every dot a plain product
    assert row["xla_all_ms"] > 0 and row["xla_all_warm_ms"] > 0 and "xla_batched_ms" not in row
    assert all(not dot["lhs_batch"] for dot, _ in row["dots"])


def test_a_bad_key_fails_in_one_line_before_anything_compiles(monkeypatch):
    from flaxgen import bench

    monkeypatch.setattr(bench, "time_case", lambda *a, **k: pytest.fail("compiled before checking"))
    with pytest.raises(SystemExit, match=r"error: .*optim.lrr"):
        step_dots.main(["vae", "16", "--set", "optim.lrr=0.1"])
