"""The one error type raised for bad dataset files."""

from __future__ import annotations

from yololab.errors import FileProblem


class DataError(FileProblem):
    """A problem in a dataset file (image, label file, data.yaml), reported as ``file:line: problem``.

    ``line`` is ``None`` when the problem concerns the whole file (an unreadable image, a missing folder).
    """
