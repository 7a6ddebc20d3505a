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
