"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

__all__ = ["MachineError", "UserError"]


class UserError(Exception):
    """A mistake in the user's input (file, config key, value), reported without a traceback.

    The message names the file, line or key and what is wrong, on one line.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class MachineError(UserError):
    """The machine's state stops the command (a full disk, a read-only folder, a server that is
    down): reported as one line naming the path or address and the cause, exit code 1."""

    exit_code = 1
