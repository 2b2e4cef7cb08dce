"""Shared test set-up."""

import os

import pytest
import torch
from threadpoolctl import threadpool_limits

# The in-process tests train tiny networks and fit small probes, where a second intra-op thread
# buys nothing and, on a busy 2-core machine, makes small ops wait on each other (measured: the
# same 300 critic steps in 1.3 s on one thread, 15-80 s on two; the digits probe 0.9 s vs 9.7 s).
# Subprocess tests (the command line, DDP) keep their own defaults.
_THREADS = int(os.environ.get("DIM_SSL_TEST_THREADS", "1"))
torch.set_num_threads(_THREADS)
threadpool_limits(_THREADS)


@pytest.fixture
def probe_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Records every probe that really runs (a probe read back from the cache is not recorded):
    ``eval.probes.suite._probe`` wrapped for the test, the list of its argument tuples returned."""
    import eval.probes.suite as suite

    calls: list[tuple] = []
    real = suite._probe
    monkeypatch.setattr(suite, "_probe", lambda *args: calls.append(args) or real(*args))
    return calls
