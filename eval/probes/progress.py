"""Progress of a long probe step: a bar on a terminal, a line with the time left in a log.

Fitting a linear probe over an l2 grid on 60,000 images, or an MLP probe for 100 epochs, takes
minutes on a CPU; without a word between "probing ..." and the result a user cannot tell a slow
step from a hung one. :class:`Progress` shows tqdm's bar when stderr is a terminal and, when it
is not (a log file, CI), prints one line every ``every_s`` seconds: what is running, how far it
is and the estimated time left. Short steps (under ``every_s``) print nothing in a log.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["Progress"]

# Units whose plural is not unit + "s" (an epoch is "epochs", a batch "batches").
_PLURALS = {"batch": "batches"}


class Progress:
    """Counts ``total`` units of a step and reports as it goes (a context manager).

    Args:
        total: Units the step has at most (an early stop may end it before).
        desc: What is running ("linear probe, l2 grid").
        unit: Name of a unit ("fit", "epoch", "batch").
        every_s: Seconds between log lines when stderr is not a terminal.
        enabled: ``False``: report nothing (tests, nested steps).
        stream: Where to write (stderr).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "step",
        every_s: float = 30.0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.every_s = int(total), desc, unit, float(every_s)
        self.plural = _PLURALS.get(unit, unit + "s")
        self.stream = stream if stream is not None else sys.stderr
        terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if enabled and terminal:
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=self.stream)
        self.lines = enabled and not terminal
        self.done = 0
        self._started = self._reported = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.lines and now - self._reported >= self.every_s:
            self._reported = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """``"desc: 3/10 fits, 42 s, about 98 s left"``."""
        elapsed = (time.monotonic() if now is None else now) - self._started
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return f"{self.desc}: {self.done}/{self.total} {self.plural}, {elapsed:.0f} s, about {left:.0f} s left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
