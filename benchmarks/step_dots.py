"""How long a bench case's matmuls take by themselves: their share of its step.

Compiles the case's training step as the bench does and reads every dot of the compiled program,
each counted as often as one step runs it (a micro-batch loop's body: its trip count). Then it
times exactly those dots under the case's compile options, two ways:
- chained in one program: fresh operands for each product (as from memory), each made to wait
  for the one before it (an optimization barrier, no arithmetic), so that none overlaps another
  and no product pays a call's dispatch;
- warm: each product on its own, repeated on the same operands (hot in cache, as a step's
  producer often leaves them), the times summed.
A step's own matmuls fall near one or the other, as its data flow keeps their operands in cache
or not. `--torch` times the chained products with `torch.matmul` in a worker process, the
contracted axes moved by transposed views as a Linear layer's backward hands them to MKL.

Timed alone, one call a product, a dot reads far slower than it runs inside a step: each call
pays jax's dispatch and wakes XLA's thread pool (benchmarks/README.md, item 26).

    python -m benchmarks.step_dots gpt_cpu 12 [--torch] [--set KEY=VALUE] [--rounds 21]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# computations start at the margin (`%name (params) -> shape {`); their instructions are indented
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{\s*$")
_ARRAY_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\w+)\[([0-9,]*)\]\S* (\w[\w\-]*)\((.*)$")
_DIMS = re.compile(r"(lhs_batch_dims|lhs_contracting_dims|rhs_batch_dims|rhs_contracting_dims)=\{([0-9,]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}


@dataclass(frozen=True)
class Dot:
    dtype: str                      # HLO's name: f32, bf16, ...
    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    lhs_contracting: tuple[int, ...]
    rhs_contracting: tuple[int, ...]
    lhs_batch: tuple[int, ...] = ()
    rhs_batch: tuple[int, ...] = ()

    @property
    def flops(self) -> int:
        """2 x batch x free lhs x free rhs x contracted."""
        def free(shape, *used):
            return math.prod(n for axis, n in enumerate(shape) if axis not in sum(used, ()))
        return 2 * (math.prod(self.lhs[a] for a in self.lhs_batch + self.lhs_contracting)
                    * free(self.lhs, self.lhs_batch, self.lhs_contracting)
                    * free(self.rhs, self.rhs_batch, self.rhs_contracting))

    @property
    def batched(self) -> bool:
        return bool(self.lhs_batch)

    @property
    def dimension_numbers(self):
        return (self.lhs_contracting, self.rhs_contracting), (self.lhs_batch, self.rhs_batch)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",")) if text else ()


def dots_of(hlo_text: str) -> dict[Dot, int]:
    """Every dot in a compiled module's text, with how many times one run of its entry executes
    it: a while body's dots times the loop's known trip count (once where XLA knows none), fused,
    called and branch computations as often as their callers."""
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    own_dots: dict[str, list[Dot]] = {}
    callees: dict[str, list[tuple[str, int]]] = {}
    entry = current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            own_dots[current], callees[current] = [], []
            entry = current if line.startswith("ENTRY") else entry
            continue
        if current is None or not line.startswith(" "):
            continue
        instruction = _ARRAY_INSTRUCTION.match(line)    # a tuple-shaped one (a while) is not
        if instruction:
            name, dtype, dims, op, _ = instruction.groups()
            shapes[name] = (dtype, _ints(dims))
            if op == "dot":
                operands = line.split(" dot(", 1)[1].split(")", 1)[0]
                lhs_name, rhs_name = re.findall(r"%([\w.\-]+)", operands)[:2]
                dims_of = dict(_DIMS.findall(line))
                own_dots[current].append(Dot(
                    shapes[lhs_name][0], shapes[lhs_name][1], shapes[rhs_name][1],
                    _ints(dims_of["lhs_contracting_dims"]), _ints(dims_of["rhs_contracting_dims"]),
                    _ints(dims_of.get("lhs_batch_dims", "")), _ints(dims_of.get("rhs_batch_dims", ""))))
        trips = _TRIP_COUNT.search(line)
        for key, callee in re.findall(r"\b(body|calls|to_apply)=%([\w.\-]+)", line):
            callees[current].append((callee, int(trips.group(1)) if key == "body" and trips else 1))
        for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
            callees[current].extend((callee, 1) for callee in re.findall(r"%([\w.\-]+)", group))
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text: pass compiled.as_text()")

    counts: dict[Dot, int] = {}

    def visit(computation: str, times: int) -> None:
        for dot in own_dots.get(computation, []):
            counts[dot] = counts.get(dot, 0) + times
        for callee, trips in callees.get(computation, []):
            visit(callee, times * trips)

    visit(entry, 1)
    return counts


def _work(counts: dict[Dot, int]) -> tuple[int, int]:
    return sum(counts.values()), sum(dot.flops * times for dot, times in counts.items())


def one_pass(counts: dict[Dot, int]) -> tuple[list[Dot], int]:
    """(the dots of one pass, how many passes make a step): the counts' common factor becomes a
    loop of passes, as a micro-batch loop repeats its body, so that the operands are those of one
    pass (a step reuses its buffers; more would time memory traffic the step does not have)."""
    repeats = math.gcd(*counts.values()) if counts else 1
    return [dot for dot, times in counts.items() for _ in range(times // repeats)], repeats


def _random_operands(dot: Dot, rng) -> tuple:
    """Standard-normal float32 numpy arrays of the dot's two operand shapes."""
    return tuple(rng.standard_normal(shape, dtype="float32") for shape in (dot.lhs, dot.rhs))


def time_in_xla(counts: dict[Dot, int], compiler_options: dict, rounds: int) -> float:
    """Median seconds for one step's worth of `counts`, chained in one program."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    dots, repeats = one_pass(counts)
    rng = np.random.default_rng(0)
    operands = [tuple(jnp.asarray(array, _DTYPES[dot.dtype]) for array in _random_operands(dot, rng))
                for dot in dots]

    def passes(operands):
        def one(carry, _):
            # the barrier ties this pass's operands to the carry, and the carry flows into the
            # result: without both, XLA hoists the products out of the loop and runs them once
            operands_now, carry_now = jax.lax.optimization_barrier((operands, carry))
            previous = carry_now
            products = []
            for dot, (lhs, rhs) in zip(dots, operands_now):
                lhs, _ = jax.lax.optimization_barrier((lhs, previous))   # wait for the last product
                previous = jax.lax.dot_general(lhs, rhs, dot.dimension_numbers)
                products.append(previous)
            # every product whole through a barrier: read an element of each before it, and XLA
            # computes only that element
            products = jax.lax.optimization_barrier(products)
            return carry_now + sum(jnp.ravel(product)[0].astype(jnp.float32) for product in products), None
        return jax.lax.scan(one, jnp.zeros((), jnp.float32), None, length=repeats)[0]

    return _median_seconds(jax.jit(passes), (operands,), compiler_options, counts, rounds)


def _median_seconds(function, args: tuple, compiler_options: dict, counts: dict[Dot, int], rounds: int) -> float:
    """Compiles `function`, checks that its program runs exactly `counts`' work, and times it."""
    import jax
    import numpy as np

    compiled = function.lower(*args).compile(compiler_options or None)
    timed = dots_of(compiled.as_text())
    if _work(timed) != _work(counts):   # XLA hoisted, merged or dropped some: the time would lie
        raise RuntimeError(f"the timed program runs {_work(timed)} (dots, FLOPs), not {_work(counts)}")
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def time_warm_in_xla(counts: dict[Dot, int], compiler_options: dict, rounds: int,
                     repeats_lasting_s: float = 0.01) -> float:
    """Seconds for one step's worth of `counts`, each product timed on its own, repeated on the
    same operands: hot in cache, as a step's producers usually leave them. The sum of those."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    total = 0.0
    for dot, times in counts.items():
        lhs, rhs = (jnp.asarray(array, _DTYPES[dot.dtype]) for array in _random_operands(dot, rng))
        # about repeats_lasting_s of work a call at 100 GFLOP/s, so that a call's dispatch is noise
        repeats = max(2, round(repeats_lasting_s * 1e11 / dot.flops))

        def repeated(lhs, rhs, dot=dot, repeats=repeats):
            def one(carry, _):
                # the carry through the barrier and into the result: each repeat is computed
                (lhs_now, rhs_now), carry_now = jax.lax.optimization_barrier(((lhs, rhs), carry))
                product = jax.lax.optimization_barrier(jax.lax.dot_general(lhs_now, rhs_now, dot.dimension_numbers))
                return carry_now + jnp.ravel(product)[0].astype(jnp.float32), None
            return jax.lax.scan(one, jnp.zeros((), jnp.float32), None, length=repeats)[0]

        seconds = _median_seconds(jax.jit(repeated), (lhs, rhs), compiler_options, {dot: repeats}, rounds)
        total += seconds / repeats * times
    return total


def torch_transposes(dot: Dot) -> tuple[bool, bool]:
    """Whether `torch.matmul` needs each operand's last two axes swapped to compute `dot`:
    batch axes leading, one contracted axis each, as the dots of a Linear or attention are."""
    leading = tuple(range(len(dot.lhs_batch)))
    if (dot.lhs_batch != leading or dot.rhs_batch != leading or len(dot.lhs_contracting) != 1
            or len(dot.lhs) != len(dot.rhs) or len(dot.lhs) != len(leading) + 2):
        raise ValueError(f"torch.matmul has no plain form for {dot}")
    return dot.lhs_contracting[0] != len(dot.lhs) - 1, dot.rhs_contracting[0] != len(dot.rhs) - 2


def time_in_torch(counts: dict[Dot, int], rounds: int) -> float:
    """Median seconds for the same products through torch.matmul (no autograd)."""
    import numpy as np
    import torch

    dots, repeats = one_pass(counts)
    rng = np.random.default_rng(0)
    pairs = []
    for dot in dots:
        lhs, rhs = (torch.from_numpy(array) for array in _random_operands(dot, rng))
        swap_lhs, swap_rhs = torch_transposes(dot)
        pairs.append((lhs.transpose(-1, -2) if swap_lhs else lhs, rhs.transpose(-1, -2) if swap_rhs else rhs))

    def step():
        for _ in range(repeats):
            for lhs, rhs in pairs:
                torch.matmul(lhs, rhs)

    with torch.no_grad():
        step()
        times = []
        for _ in range(rounds):
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return float(np.median(times))


# the torch side runs in a process of its own, as the bench runs its peers (item 19)
_TORCH_WORKER = """
import json, sys
from benchmarks.step_dots import Dot, time_in_torch
rows = json.load(sys.stdin)
counts = {Dot(**{key: tuple(value) if isinstance(value, list) else value for key, value in row.items()}): times
          for row, times in rows}
print(time_in_torch(counts, int(sys.argv[1])))
"""


def _line(who: str, label: str, counts: dict[Dot, int], seconds: float) -> str:
    flops = _work(counts)[1]
    return (f"  {who:<6}{label:<14}{sum(counts.values()):4d} dots  {flops / 1e9:7.3f} GFLOP  "
            f"{seconds * 1e3:8.2f} ms  {flops / seconds / 1e9:6.0f} GFLOP/s")


def main(argv: list[str] | None = None) -> dict:
    from flaxgen import bench, hostmem
    from flaxgen.config import ConfigError
    from flaxgen.training.loop import checked_plan, step_compiler_options

    parser = argparse.ArgumentParser("benchmarks.step_dots", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(bench.MODELS))
    parser.add_argument("batch", type=int)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--torch", action="store_true", help="also time the same products with torch.matmul")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    hostmem.keep_freed_memory()     # as the flaxgen command runs
    try:
        options = step_compiler_options(*checked_plan(
            bench.case_config(args.model, args.batch, "single", None, None, args.overrides)))
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None

    result, run = bench.time_case(args.model, args.batch, repeats=1, overrides=args.overrides)
    step_s = statistics.median(run(bench._steps_lasting(run)) for _ in range(5))
    counts = dots_of(run.compiled.as_text())     # the very program just timed
    if not counts:
        raise SystemExit(f"error: {args.model}'s compiled step has no dots to time")
    row = {"model": args.model, "batch": args.batch, "overrides": args.overrides,
           "micro_batches": result.micro_batches, "step_ms": step_s * 1e3,
           "dots": [[{key: list(value) if isinstance(value, tuple) else value for key, value in asdict(dot).items()},
                     times] for dot, times in counts.items()]}
    print(f"{args.model} b{args.batch}: step {step_s * 1e3:.2f} ms (median of 5 repeats), "
          f"{result.micro_batches} micro-batch{'es' if result.micro_batches > 1 else ''}; its dots alone:")
    groups = {"all": counts}
    plain = {dot: times for dot, times in counts.items() if not dot.batched}
    if 0 < len(plain) < len(counts):    # both kinds: each on its own too
        groups.update(plain=plain, batched={dot: times for dot, times in counts.items() if dot.batched})
    for label, chosen in groups.items():
        seconds = time_in_xla(chosen, options, args.rounds)
        row[f"xla_{label}_ms"] = seconds * 1e3
        print(_line("XLA", label, chosen, seconds), flush=True)
        seconds = time_warm_in_xla(chosen, options, args.rounds)
        row[f"xla_{label}_warm_ms"] = seconds * 1e3
        print(_line("XLA", label + ", warm", chosen, seconds), flush=True)
    if args.torch:
        worker = subprocess.run([sys.executable, "-c", _TORCH_WORKER, str(args.rounds)], check=False,
                                input=json.dumps(row["dots"]), capture_output=True, text=True,
                                env={**bench.PEER_MALLOC_ENV, **os.environ})
        if worker.returncode:
            raise SystemExit(f"error: the torch worker failed: {worker.stderr.strip().splitlines()[-1]}")
        seconds = float(worker.stdout.split()[-1])
        row["torch_all_ms"] = seconds * 1e3
        print(_line("torch", "all", counts, seconds), flush=True)
    print(f"  the dots alone take {row['xla_all_ms'] / row['step_ms']:.0%} of the step's time chained on fresh "
          f"operands, {row['xla_all_warm_ms'] / row['step_ms']:.0%} each on hot ones")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(row, file, indent=1)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
