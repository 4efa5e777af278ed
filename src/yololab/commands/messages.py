"""How the commands report a problem to the user: one ``error:`` line, whatever its length and file names."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

EXIT_ERROR = 2  # the command cannot run on its input (unreadable file, bad option): the same for every command


def printable(text: str) -> str:
    """``text`` safe to write to a UTF-8 stream: the bytes of a file name that is not UTF-8 (surrogate-escaped
    in ``str``) are shown as ``\\xff``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def print_error(console: Console, message: str) -> None:
    """``error: message`` in red on one line, never wrapped at the terminal's width; the message is user text
    (paths, cfg sections like ``[net]``), never markup."""
    console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)


def fail(console: Console, message: str) -> NoReturn:
    """:func:`print_error`, then exit with :data:`EXIT_ERROR`."""
    print_error(console, message)
    raise typer.Exit(EXIT_ERROR)
