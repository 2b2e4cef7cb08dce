"""What every ``dim-ssl`` verb does with errors and interruptions, in one place.

A verb resolves its request (a configuration, a checkpoint), then runs it. A configuration
mistake exits with status 2 (as argparse's usage errors); a missing dataset, damaged
checkpoint, unusable output folder or failed run with status 1; each with one line on stderr
that says what was wrong, no traceback. A SIGINT/SIGTERM during training, after the run saved
what it can continue from, prints the command that continues and exits with 128 + the signal
number (the shell's convention); a signal before anything was saved exits 130 or 143.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from pytorch_lightning.utilities.exceptions import SIGTERMException

from eval.errors import CheckpointError, ConfigError, DatasetNotFoundError, OutputInUse, RunError
from eval.training.resume import TrainingInterrupted

__all__ = ["EXIT_CONFIG_ERROR", "EXIT_RUN_ERROR", "run_guarded"]

EXIT_CONFIG_ERROR = 2
EXIT_RUN_ERROR = 1


def run_guarded(
    command: str,
    resolve: Callable[[], Any],
    execute: Callable[[Any], Any],
    continue_with: Sequence[str] = (),
    continue_flag: str | None = None,
    also_run_errors: tuple[type[Exception], ...] = (),
) -> tuple[Any, Any] | int:
    """``(resolved, result)`` of ``execute(resolve())``, or the exit status after a message.

    Args:
        command: The verb, for messages (``"compare"``).
        resolve: Reads and checks the request (raises ``ConfigError`` for a bad one).
        execute: Runs the resolved request and returns its result.
        continue_with: The command line's arguments after ``dim-ssl <command>``, to print the
            command that continues an interrupted run.
        continue_flag: The flag that continues (``"--resume"``, ``"--reuse"``); ``None`` for
            verbs that train nothing.
        also_run_errors: Further exceptions this verb reports as run errors (``evaluate``
            refuses unknown positions with a ValueError).
    """

    def fail(message: str, status: int) -> int:
        print(f"dim-ssl {command}: error: {message}", file=sys.stderr)
        return status

    try:
        resolved = resolve()
        return resolved, execute(resolved)
    except (ConfigError, CheckpointError) as err:  # what the user gave is wrong: a config, a file
        return fail(str(err), EXIT_CONFIG_ERROR)
    except (DatasetNotFoundError, RunError, OutputInUse, *also_run_errors) as err:
        return fail(str(err), EXIT_RUN_ERROR)
    except TrainingInterrupted as stop:
        again = " ".join([f"dim-ssl {command}", *continue_with, *([continue_flag] if continue_flag else [])])
        print(f"\n{stop}\ncontinue with: {again}", file=sys.stderr)
        return 128 + int(stop.signum)
    except (KeyboardInterrupt, SIGTERMException) as stop:
        # A signal before training started (or a second one): nothing new was saved.
        name = "SIGINT" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
        print(f"\nstopped by {name} without a new checkpoint", file=sys.stderr)
        return 130 if name == "SIGINT" else 143
