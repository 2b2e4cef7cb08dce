"""Shared test set-up."""

import os

import torch
from threadpoolctl import threadpool_limits

# The in-process tests train tiny networks and fit small probes, where a second intra-op thread
# buys nothing and, on a busy 2-core machine, makes small ops wait on each other (measured: the
# same 300 critic steps in 1.3 s on one thread, 15-80 s on two; the digits probe 0.9 s vs 9.7 s).
# Subprocess tests (the command line, DDP) keep their own defaults.
_THREADS = int(os.environ.get("DIM_SSL_TEST_THREADS", "1"))
torch.set_num_threads(_THREADS)
threadpool_limits(_THREADS)
