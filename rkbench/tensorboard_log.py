"""TensorBoard curves of a run (``logging: {tensorboard: true}`` or ``rkbench run --tensorboard``):
per-epoch scalars written with torch's ``SummaryWriter`` under ``<run or teacher dir>/tensorboard/``,
so ``tensorboard --logdir results/<suite>`` shows every run of a suite side by side.

Scalars, at step = epoch (1, 2, ...):
- ``loss`` (the mean total loss) and ``loss_terms/<name>`` (each named term of the method);
- ``learning_rate`` (at the epoch's last step) and ``train_accuracy`` (clean, eval mode, on a fixed
  sample of training examples; see ``train.train_accuracy``);
- from the run's record once it is written: every per-epoch series it holds besides the loss terms
  (a list of ``{name: number}``, one per epoch, e.g. validation values) as ``<field>/<name>``, and the
  test evaluation (``evaluation/clean``, ``evaluation/<attack>``, ``evaluation/worst_case``) at the
  last epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

from .errors import ConfigError

DIRECTORY = "tensorboard"
ALREADY_LOGGED = {"loss_terms", "losses"}  # written live, epoch by epoch


def check_available() -> None:
    """One line instead of an ImportError deep inside a run."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("logging.tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'rkbench[tensorboard]')") from None


class TensorBoardLog:
    """One run's event files; ``epoch`` is the trainer's ``on_epoch_end`` hook."""

    def __init__(self, run_directory: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(run_directory) / DIRECTORY
        self.writer = SummaryWriter(log_dir=str(self.directory))

    def epoch(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(name, float(value), step)
        self.writer.flush()  # visible in TensorBoard while the run goes on

    def record(self, record: dict, epochs: int | None) -> None:
        """The per-epoch series a finished run's record holds (validation values, whatever their
        field is called) and its test evaluation at the last epoch."""
        for field, value in record.items():
            if field in ALREADY_LOGGED or not _per_epoch_series(value):
                continue
            for index, entry in enumerate(value):
                self.epoch(index + 1, {f"{field}/{name}": number for name, number in entry.items()})
        step = epochs or len(record.get("losses") or []) or 1
        final = {"evaluation/clean": record.get("clean_accuracy"),
                 "evaluation/worst_case": record.get("worst_case_accuracy")}
        for label, accuracy in (record.get("robust_accuracy") or {}).items():
            final[f"evaluation/{label}"] = accuracy
        self.epoch(step, final)

    def close(self) -> None:
        self.writer.close()


def _per_epoch_series(value) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(entry, dict) for entry in value)
            and all(isinstance(number, (int, float)) and not isinstance(number, bool)
                    for entry in value for number in entry.values()))
