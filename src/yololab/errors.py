"""The base of the errors that point at a place in a user's file."""

from __future__ import annotations

from pathlib import Path


class FileProblem(ValueError):
    """A problem in a file, reported as ``file:line: problem``.

    ``line`` is 1-based and ``None`` when the problem concerns the whole file. The fields stay available so
    callers can collect and sort problems.
    """

    def __init__(self, file: str | Path, line: int | None, problem: str):
        self.file = str(file)
        self.line = line
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.problem}"

    def __reduce__(self):
        # Keep the three fields when the error crosses a process boundary (DataLoader workers, DDP).
        return (type(self), (self.file, self.line, self.problem))


class RunStopped(Exception):
    """A training run that stopped before its last epoch, for a reason the user can act on; ``str`` is one line
    saying what happened, what is kept and how to go on. ``exit_code`` is the process status to exit with."""

    def __init__(self, message: str, exit_code: int = 1):
        self.message, self.exit_code = message, exit_code
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.message, self.exit_code))
