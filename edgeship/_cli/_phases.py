"""The converter's progress line on a terminal: which phase runs and for how long.

The calibration bar (converter/_calibrate.py) covers calibration; this spinner covers the
phases before and after it, which on a real model take as long (per-layer SQNR and the
eval run many samples through two models). It is drawn only on a terminal, on stderr,
and erased when done, like the bar: logs and captured output stay clean.
"""

from __future__ import annotations

from typing import Any

# the phase that just ended -> what runs now (None: the calibration bar shows instead)
_NEXT: dict[str, str | None] = {
    "load": "optimizing the float graph",
    "optimize": None,
    "calibrate": "quantizing",
    "quantize": "writing the INT8 model(s)",
    "write": "compiling for the --target NPUs",
    "targets": "measuring: per-layer and output SQNR",
    "eval": "drift profile of the eval set",
    "profile": "writing the report",
}


class PhaseSpinner:
    """``on_phase`` for :func:`edgeship.converter.convert`: a transient spinner line."""

    def __init__(self, enabled: bool, *, evaluating: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.after_measure = ("evaluating: accuracy, agreement, latency on --eval"
                              if evaluating else "writing the report")
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> PhaseSpinner:
        self._show("loading the model and data")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def __call__(self, ended: str) -> None:
        label = self.after_measure if ended == "measure" else _NEXT.get(ended, "")
        if label is None:
            self._stop()  # calibration draws its own bar
        elif label:
            self._show(label)

    def _show(self, label: str) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=self.console,
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=None)
        else:
            self.progress.reset(self.task, description=label)  # elapsed restarts per phase
        self.progress.refresh()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = self.task = None
