"""The toolkit's own exceptions. This module imports nothing from the package, so every layer
(models, modules, reliability, CLI) can raise and catch them without import cycles."""
from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """Raised when ``nan_policy`` says stop (after saving a checkpoint for inspection)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permission, not a directory, ...).

    Carries the ``errno`` of the underlying OSError; the previous file at ``filename`` is untouched.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class CheckpointLoadError(ValueError):
    """A checkpoint file is truncated, corrupt, or holds objects ``weights_only=True`` refuses."""


class ConfigError(ValueError):
    """A recipe or command-line option is wrong. The message names the file (and line) or flag, the
    key and the value; ``hint`` is an optional second line (where to look next)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


#: what the CLI reports as one line instead of a traceback (user-caused problems)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, NonFiniteLossError)

__all__ = ["ConfigError", "NonFiniteLossError", "CheckpointWriteError", "CheckpointLoadError", "USER_ERRORS"]
