"""Peak memory of a training run, for the comparison table.

- On CUDA: ``torch.cuda.max_memory_allocated`` over the run, above what was allocated when
  training started (model and data already there): the tensors training adds (activations,
  gradients, optimizer state).
- On the CPU (Linux): the peak resident set size (``VmHWM``) over the run, above the resident
  size when training started. The peak is reset first (``/proc/self/clear_refs``) and freed
  memory is handed back to the system (``malloc_trim``), so runs measured one after another in
  one process do not inherit each other's peak. It counts everything the process touches
  while training (data loading included when ``num_workers=0``): a cruder number than the
  CUDA one, comparable between methods measured the same way. ``dim-ssl bench`` measures peak
  tensor memory per step more finely.

Example::

    memory = PeakMemory()
    trainer = pl.Trainer(callbacks=[memory], ...)
    trainer.fit(model, data)
    memory.peak_mb, memory.measure      # 812.4, "cpu peak RSS increase"
"""

from __future__ import annotations

import ctypes
import gc
import re
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["PeakMemory", "reset_peak_rss", "rss_mb"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_mb(field: str = "VmRSS") -> float | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; ``None`` off Linux."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def reset_peak_rss() -> bool:
    """Frees what can be freed and resets ``VmHWM`` to the current resident size; False if it cannot."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: return freed heap pages to the system
    except (OSError, AttributeError):
        pass
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: "reset the peak resident set size"
    except OSError:
        return False
    return True


class PeakMemory(Callback):
    """Records the peak memory of ``trainer.fit`` above its level when training started.

    Attributes:
        peak_mb: The peak increase in MiB, or ``None`` where it cannot be measured.
        measure: What was measured (``"cuda max_memory_allocated"``, ``"cpu peak RSS increase"``).
    """

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self.measure = "unavailable"
        self._base: float | None = None
        self._device: torch.device | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._device = pl_module.device
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
            torch.cuda.reset_peak_memory_stats(self._device)
            self._base = torch.cuda.memory_allocated(self._device) / 2**20
            self.measure = "cuda max_memory_allocated"
        elif reset_peak_rss():
            self._base = rss_mb("VmRSS")
            self.measure = "cpu peak RSS increase"
        else:
            self._base = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._base is None or self._device is None:
            return
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
            self.peak_mb = torch.cuda.max_memory_allocated(self._device) / 2**20 - self._base
        else:
            peak = rss_mb("VmHWM")
            self.peak_mb = None if peak is None else max(peak - self._base, 0.0)
