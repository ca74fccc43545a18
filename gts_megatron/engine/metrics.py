"""What a run reports: metrics.jsonl (one line per logged step), TensorBoard scalars, and a
progress display (a bar on a terminal, plain lines in logs). Only the main rank writes."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from gts_megatron.config import TrainConfig


class RunLog:
    """Step metrics of one run directory, kept consistent across resumes."""

    def __init__(self, run_dir: Path, enabled: bool, train: TrainConfig, start_step: int, desc: str = "train"):
        """Only ``enabled`` (the main rank) writes; ``train`` gives the run's steps and whether it
        logs to TensorBoard; ``start_step`` is the step the run continues from."""
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        self.bar: Optional[tqdm] = None
        if not enabled:
            return
        self._truncate_after(start_step)  # steps logged after the checkpoint we resume from
        if train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)
        if sys.stderr.isatty():
            self.bar = tqdm(total=train.steps, initial=start_step, desc=desc, unit="step",
                            dynamic_ncols=True)
        self.total_steps = train.steps

    def _truncate_after(self, step: int) -> None:
        """Keep the steps up to the one the run continues from; the steps after it (trained past
        the checkpoint before a crash, and about to be trained again) move to
        metrics.superseded.jsonl, appended there, so no logged line is ever lost."""
        if not self.path.exists():
            return
        kept, superseded = [], []
        for line in self.path.read_text().splitlines():
            try:
                (kept if json.loads(line).get("step", 0) <= step else superseded).append(line)
            except json.JSONDecodeError:
                superseded.append(line)  # a line cut by a crash
        if not superseded:
            return
        with (self.path.parent / "metrics.superseded.jsonl").open("a") as fh:
            fh.write("".join(f"{line}\n" for line in superseded))
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict, show: bool = True) -> None:
        """Record ``metrics`` for ``step`` (1-based: the number of optimizer steps done)."""
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if not show:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}",
                                 tok_s=f"{metrics.get('tokens_per_s', 0):.0f}", refresh=True)
        else:
            parts = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in metrics.items())
            print(f"step {step}/{self.total_steps} {parts}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """A line for the user, printed without breaking the progress bar."""
        if self.enabled:
            (self.bar.write if self.bar is not None else lambda t: print(t, file=sys.stderr, flush=True))(text)

    def close(self) -> None:
        """Flush and close the TensorBoard writer and the progress bar."""
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
