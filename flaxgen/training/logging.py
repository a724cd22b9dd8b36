"""metrics.jsonl, TensorBoard event files, and a progress bar with steps/s."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


class MetricsLog:
    def __init__(self, workdir, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self._truncate_after(start_step)
        self.file = self.path.open("a")
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=30)
        self.bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.last_step = start_step

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites what came after its checkpoint, so records stay unique."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict, kind: str = "train") -> None:
        record = {"step": step, "kind": kind, "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{name}", value, step)
        line = f"{kind} step {step}: " + " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.update(step - self.last_step) if kind == "train" else None
            self.bar.set_postfix_str(f"{metrics.get('steps_per_s', 0):.1f} steps/s") if kind == "train" else None
            self.bar.write(line)
        else:
            print(line, flush=True)
        if kind == "train":
            self.last_step = step

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _plain(value):
    try:
        return float(value) if not isinstance(value, (int, str)) else value
    except (TypeError, ValueError):
        return str(value)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
