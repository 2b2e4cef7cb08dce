"""The harness's user-facing errors, in one place.

Each one means "the request cannot be carried out as given" and carries a message that says
what was wrong and what to do; the command line (:mod:`eval.cli`) turns them into one line on
stderr and an exit status instead of a traceback. This module imports nothing from the
project, so every layer of the harness can raise them.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DatasetNotFoundError", "OutputInUse", "RunError"]


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, unreadable file.

    The message says which key or file, what was expected and what was given.
    """


class DatasetNotFoundError(FileNotFoundError):
    """A known dataset whose files are not on this machine (and were not downloaded).

    The message names the dataset, the places looked in, and the ways to get it.
    """


class CheckpointError(ValueError):
    """A file that is not a usable dim-ssl checkpoint (missing, damaged, foreign, mismatched)."""


class RunError(RuntimeError):
    """The output folder does not fit the request (a finished run without --resume, nothing to resume)."""


class OutputInUse(RuntimeError):
    """The output folder holds an earlier comparison, and neither --overwrite nor --reuse was given."""
