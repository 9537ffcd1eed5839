"""How every script ends on an error: a user's mistake (a bad option, a run directory from another config, a missing
or corrupt checkpoint, missing simulator assets) prints its message alone and exits with status 2; anything else
is a bug and keeps its traceback.

    @entry_point
    def main(argv=None): ...
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that describe a user's mistake, with a message that names the problem and the fix."""
    from envs.maniskill import MissingAssetsError
    from envs.registry import UnknownTaskError
    from eval.stages import ExperimentMismatch
    from eval.suite import OutputExistsError
    from rollouts.checkpoint import CheckpointError
    from rollouts.config import ConfigError
    from vla.checkpoint import CorruptCheckpointError, MissingCheckpointError

    return (ConfigError, ExperimentMismatch, CheckpointError, MissingCheckpointError, CorruptCheckpointError,
            MissingAssetsError, UnknownTaskError, OutputExistsError)  # fmt: skip


def entry_point(main: F) -> F:
    """Wrap a script's main(): users' errors -> "error: <message>" on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as error:
            if not isinstance(error, user_errors()):
                raise
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
