"""What ``dim-ssl compare`` and ``dim-ssl transfer`` do with errors and interruptions.

Both commands resolve a configuration, then run long trainings: a configuration mistake exits
with status 2, a missing dataset, damaged checkpoint, failed run or occupied output folder with
status 1, and a SIGINT/SIGTERM during training keeps the finished runs and prints the command
that continues (``--reuse``), exiting with 128 + the signal number.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence
from eval.errors import CheckpointError
from eval.errors import OutputInUse
from eval.errors import ConfigError
from eval.errors import DatasetNotFoundError
from eval.training.pretrain import TrainingInterrupted
from eval.errors import RunError

EXIT_CONFIG_ERROR = 2
EXIT_RUN_ERROR = 1


def run_guarded(
    command: str, resolve: Callable[[], Any], execute: Callable[[Any], dict], continue_with: Sequence[str]
) -> tuple[Any, dict] | int:
    """``(resolved, result)`` of ``execute(resolve())``, or the exit status after an error message.

    Args:
        command: The command's name in messages (``"compare"``).
        resolve: Reads and checks the configuration (raises ``ConfigError``).
        execute: Runs the resolved configuration and returns its result.
        continue_with: The command line's arguments after ``dim-ssl <command>``, to print the
            command that continues an interrupted run.
    """

    def fail(message: str, status: int) -> int:
        print(f"dim-ssl {command}: error: {message}", file=sys.stderr)
        return status

    try:
        resolved = resolve()
        return resolved, execute(resolved)
    except ConfigError as err:
        return fail(str(err), EXIT_CONFIG_ERROR)
    except (DatasetNotFoundError, CheckpointError, RunError, OutputInUse) as err:
        return fail(str(err), EXIT_RUN_ERROR)
    except TrainingInterrupted as stop:
        again = " ".join([f"dim-ssl {command}", *continue_with, "--reuse"])
        print(f"\n{stop}\nthe finished runs are kept; continue with: {again}", file=sys.stderr)
        return 128 + int(stop.signum)
    except KeyboardInterrupt:
        print("\nstopped by SIGINT", file=sys.stderr)
        return 130
