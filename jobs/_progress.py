"""Per-epoch progress of ``jobs.finetune``: TensorBoard events and one line on the driver's stdout.

Ray Train V2 ships no TensorBoard logger: its ``RunConfig`` refuses Ray Tune callbacks such as
``TBXLoggerCallback``, and the hook it offers for reported metrics is ``ray.train.UserCallback``,
which runs in the Train controller on the driver's node. :class:`EpochLogger` is that callback: it
writes each report with tensorboardX (the writer Ray Tune's logger uses) and forwards the progress
line to the driver through a Ray queue, since actor output reaches the driver only when Ray forwards
all logs. This module stays light (no torch) because the controller unpickles it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.train import UserCallback
from ray.util.queue import Empty, Queue

TAG_PREFIX = "finetune"


class EpochLogger(UserCallback):
    """After every ``ray.train.report``: the metrics as TensorBoard scalars under ``logdir`` (x axis:
    the optimiser step) and :func:`progress_line` into ``lines``."""

    def __init__(self, *, logdir: Path, lines: Queue, epochs: int) -> None:
        self.logdir, self.lines, self.epochs = str(logdir), lines, epochs
        self._writer: Any = None  # opened in the controller, not pickled

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from tensorboardX import SummaryWriter

        report = metrics[0]  # rank 0's; the numbers are all-reduced, so every worker reports the same
        self._writer = self._writer or SummaryWriter(self.logdir)
        for key, value in report.items():
            if key not in ("epoch", "step"):
                self._writer.add_scalar(f"{TAG_PREFIX}/{key}", value, global_step=report["step"])
        self._writer.flush()
        self.lines.put(progress_line(report, self.epochs))


def progress_line(report: dict[str, Any], epochs: int) -> str:
    """``finetune epoch 2/3 step 250: train_loss 0.4123 val_loss 0.3811 val_accuracy 0.8510 ...``."""
    return (
        f"{TAG_PREFIX} epoch {report['epoch']}/{epochs} step {report['step']}: "
        f"train_loss {report['train_loss']:.4f} val_loss {report['val_loss']:.4f} "
        f"val_accuracy {report['val_accuracy']:.4f} lr {report['lr']:.2e} "
        f"({report['epoch_seconds']:.1f} s, {report['train_tokens_per_s']:.0f} train tokens/s)"
    )


@contextmanager
def printing(lines: Queue) -> Iterator[None]:
    """Print what arrives in ``lines`` while the block runs (``trainer.fit`` blocks the main thread),
    then whatever is left, then close the queue."""
    done = threading.Event()

    def pump() -> None:
        while not done.is_set():
            try:
                print(lines.get(timeout=0.5), flush=True)
            except Empty:
                continue

    thread = threading.Thread(target=pump, name="finetune-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        for line in lines.get_nowait_batch(lines.qsize()):
            print(line, flush=True)
        lines.shutdown()
