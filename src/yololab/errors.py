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
