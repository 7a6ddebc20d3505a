"""Project exceptions: each carries a one-line message meant for a person.

The CLI turns any ``LeukodxError`` into that line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LeukodxError(Exception):
    """Base class for every error a user can cause and fix."""


class InvalidInputError(LeukodxError, ValueError):
    """An input file or argument cannot be used (corrupt image, wrong shape, empty folder)."""


class DataNotFoundError(LeukodxError, FileNotFoundError):
    """The data root, a dataset or a file it names is missing."""


class IntegrityError(LeukodxError):
    """A file does not match the checksum recorded for it (weights card, SHA256SUMS)."""


class ModelNotFoundError(LeukodxError, KeyError):
    """No bundled, registered or on-disk model has that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (``limit`` characters at most), '' when it has none."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return line if limit is None else line[:limit]


def item_error(item: object, exc: BaseException) -> str:
    """The one line a batch records for an item that failed: the error's own message for a
    ``LeukodxError``; otherwise (a bug, caught so that the batch keeps its other results) the
    exception named as an internal error, to be reported."""
    if isinstance(exc, LeukodxError):
        return str(exc)
    first = first_line(exc)
    return f"{item}: internal error ({type(exc).__name__}{': ' + first if first else ''}); please report it"


class Interrupted(KeyboardInterrupt):
    """A batch stopped by the user (Ctrl-C) after keeping what it had finished.

    ``done`` of ``total`` items were finished; ``partial`` holds the batch's result so far when the
    caller writes the outputs (``None`` when the batch wrote them itself, as it went). The message
    says what was kept, e.g. "interrupted; 12 of 40 fields written to out/".
    """

    #: the latest one raised in this process: typer turns Ctrl-C into a bare exit code 130, so the CLI
    #: reads what was kept from here
    latest: "Interrupted | None" = None

    def __init__(self, done: int, total: int, unit: str, written_to: str | None = None, partial: object = None):
        self.done, self.total, self.unit, self.written_to, self.partial = done, total, unit, written_to, partial
        super().__init__(self.message)
        Interrupted.latest = self

    @property
    def message(self) -> str:
        where = f" written to {self.written_to}" if self.written_to else " finished (not written)"
        return f"interrupted; {self.done} of {self.total} {self.unit}{where}"

    def __str__(self) -> str:
        return self.message
