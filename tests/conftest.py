"""Shared test set-up."""

import os

import torch

# The in-process tests train tiny networks, where a second intra-op thread buys nothing and, on a
# busy 2-core machine, makes small ops wait on each other (measured: 1.3 s vs 15-80 s for the same
# 300 critic steps). Subprocess tests (the command line, DDP) keep torch's default.
torch.set_num_threads(int(os.environ.get("DIM_SSL_TEST_THREADS", "1")))
