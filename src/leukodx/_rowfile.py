"""Result rows streamed to disk as they are produced, resumable, and finished atomically in the
format the output's extension names: ``.csv``, ``.jsonl``, ``.json`` or ``.parquet``.

While a run goes, its rows are appended (and flushed, chunk by chunk) to ``OUTPUT.partial.jsonl``,
whose first line is a manifest: what made the rows (model and its sha256, options) and over which
inputs (their count and a digest of their names in order). Only when every input is done is the
output written, from the partial file, and the partial file removed; an interrupted run leaves
the partial file, never an output that looks complete. ``resume=True`` continues a partial file
with the same manifest: finished inputs are not redone, a torn last line is dropped, and inputs
that failed are tried again; a partial file from another model, other options or another input
list is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from leukodx import _atomic
from leukodx.errors import InvalidInputError

FORMATS = (".csv", ".jsonl", ".json", ".parquet")
KEY = "input"


class ResumeRefused(InvalidInputError):
    """``resume`` found a partial file this run cannot continue (another model, options or input list,
    or not a leukodx partial file)."""


def inputs_digest(names: Iterable[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def check_output(output: Path) -> str:
    """The output's format from its extension, or one line naming the ones that are understood."""
    fmt = output.suffix.lower()
    if fmt not in FORMATS:
        raise InvalidInputError(f"{output}: output must end in {', '.join(FORMATS)}")
    if fmt == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise InvalidInputError(f"{output}: Parquet output needs pyarrow: pip install 'leukodx[parquet]'")
    if output.is_dir():
        raise InvalidInputError(f"{output}: is a folder; give a file name")
    return fmt


class RowFile:
    """``rf = RowFile(out, manifest, resume)``; ``done = rf.start()``; ``rf.append(rows, errors)``
    per chunk; ``rf.finish(...)`` once every input is done."""

    def __init__(self, output: str | os.PathLike, manifest: dict, resume: bool = False, scratch: bool = False):
        """``scratch``: the rows only feed a result the caller writes to ``output`` itself (``evaluate``'s
        metrics), so ``output`` may have any extension and ``finish`` is not used."""
        self.output = Path(output)
        self.format = None if scratch else check_output(self.output)
        self.partial = self.output.with_name(self.output.name + ".partial.jsonl")
        self.manifest = {"leukodx_partial": 1, "format": self.format, **manifest}
        self.resume = resume
        self.resumed = 0
        self._fh = None

    def start(self) -> set[str]:
        """Open the partial file (continued or new); returns the keys of the rows already done."""
        if self.resume and not self.partial.exists() and self.output.exists():
            raise InvalidInputError(f"{self.output}: already complete (no {self.partial.name} to resume); remove it to "
                                    "run again")
        done: set[str] = set()
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        # written anew with the kept rows only, streamed: failed inputs are tried again, a torn line is gone
        with _atomic.atomic_path(self.partial) as tmp, open(tmp, "w", encoding="utf-8") as out:
            out.write(json.dumps({"manifest": self.manifest}) + "\n")
            if self.resume and self.partial.exists():
                with open(self.partial, encoding="utf-8", errors="replace") as fh:
                    try:
                        found = json.loads(next(fh))["manifest"]
                    except (StopIteration, ValueError, KeyError, TypeError):
                        raise ResumeRefused(f"{self.partial}: not a leukodx partial result; remove it or write "
                                                "elsewhere") from None
                    self._check_same(found)
                    for line in fh:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # the torn last line of a killed run
                        if "row" in entry and entry["row"][KEY] not in done:
                            done.add(entry["row"][KEY])
                            out.write(line.rstrip("\n") + "\n")
        self.resumed = len(done)
        self._fh = open(self.partial, "a", encoding="utf-8")
        return done

    def _check_same(self, found: dict) -> None:
        for key, what in (("model_sha256", "model"), ("inputs_sha256", "input list"), ("format", "output format")):
            if found.get(key) != self.manifest.get(key):
                raise ResumeRefused(
                    f"--resume {self.partial}: written by another {what} ({found.get('model', '?')} over "
                    f"{found.get('n_inputs', '?')} inputs); remove it or write elsewhere")
        for key, value in self.manifest.items():
            if key not in ("model_sha256", "inputs_sha256", "format") and found.get(key) != value:
                raise ResumeRefused(f"--resume {self.partial}: written with {key} {found.get(key)!r}, "
                                        f"now {value!r}; remove it or write elsewhere")

    def append(self, rows: Sequence[dict], errors: Sequence[dict] = (), extras: Sequence[dict] | None = None) -> None:
        """Rows (each with its ``extras``: values kept beside it, e.g. an unrounded score) and errors."""
        extras = extras if extras is not None else [{}] * len(rows)
        lines = ([_atomic.dumps({"row": r, **x}) for r, x in zip(rows, extras)]
                 + [_atomic.dumps({"error": e}) for e in errors])
        if lines:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def entries(self, kind: str) -> Iterator[dict]:
        """The partial file's rows (``kind='row'``), errors, or a value kept beside each row, in order."""
        return (entry[kind] for entry in self.lines() if kind in entry)

    def lines(self) -> Iterator[dict]:
        """Every entry of the partial file in order: ``{"row": ..., <kept beside it>}`` or ``{"error": ...}``."""
        with open(self.partial, encoding="utf-8") as fh:
            next(fh)
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def sorted_entries(self, key: Callable[[dict], tuple[float, ...]]) -> Iterator[dict]:
        """The row entries (as ``lines`` gives them) ordered by ``key`` (a tuple of numbers; ties keep
        the file's order), read one at a time: memory holds each row's key and file offset in arrays,
        not the rows."""
        from array import array

        import numpy as np

        keys, offsets = array("d"), array("q")
        with open(self.partial, "rb") as fh:
            fh.readline()
            while True:
                at, line = fh.tell(), fh.readline()
                if not line:
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if "row" in entry:
                    keys.extend(key(entry))
                    offsets.append(at)
            if not offsets:
                return
            columns = np.frombuffer(keys, dtype=float).reshape(len(offsets), -1)
            order = np.lexsort([np.arange(len(offsets))] + [columns[:, k] for k in reversed(range(columns.shape[1]))])
            for i in order:
                fh.seek(offsets[i])
                yield json.loads(fh.readline())

    def rows(self, explode: Callable[[dict], Iterable[dict]] | None = None) -> Iterator[dict]:
        """The partial file's rows in order; with ``explode``, each row's sub-rows instead (a smear
        field's cells)."""
        rows = self.entries("row")
        return (x for r in rows for x in explode(r)) if explode is not None else rows

    def finish(self, header: dict, columns: Sequence[str], cells: Callable[[dict], list],
               explode: Callable[[dict], Iterable[dict]] | None = None) -> Path:
        """Write the output from the partial file (atomically) and remove the partial file.
        ``header``: what the JSON output holds besides rows and errors (model, shift, ...); ``columns``
        and ``cells`` (a row's typed values: numbers, text, None) flatten a row for CSV and Parquet;
        ``explode``: the output rows of each stored row (``rows``)."""
        from leukodx._csv import write_csv

        self.close()
        with _atomic.atomic_path(self.output) as tmp:
            if self.format == ".csv":
                with open(tmp, "w", encoding="utf-8", newline="") as fh:
                    write_csv(fh, columns, ([text_cell(v) for v in cells(r)] for r in self.rows(explode)))
            elif self.format == ".jsonl":
                with open(tmp, "w", encoding="utf-8") as fh:
                    for r in self.rows(explode):
                        fh.write(_atomic.dumps(r) + "\n")
            elif self.format == ".json":
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(_atomic.dumps(header)[:-1] + (", " if header else "") + '"rows": [')
                    for i, r in enumerate(self.rows(explode)):
                        fh.write(("," if i else "") + "\n" + _atomic.dumps(r))
                    fh.write('\n], "errors": ' + _atomic.dumps(list(self.entries("error"))) + "}\n")
            else:
                _write_parquet(tmp, header, columns, (cells(r) for r in self.rows(explode)))
        self.partial.unlink(missing_ok=True)
        return self.output


def text_cell(value) -> object:
    """A CSV cell: empty for None, 0/1 for booleans, 4 decimals for fractions."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return value


def _write_parquet(path: Path, header: dict, columns: Sequence[str], lines: Iterator[list], group: int = 8192) -> None:
    """Typed columns (numbers as numbers, empty cells as nulls), written in row groups; the JSON header
    (model, shift, ...) in the file's metadata under ``leukodx``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(values: list):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([None if v is None else str(v) for v in values])

    writer, batch = None, []

    def flush() -> None:
        nonlocal writer
        table = pa.table({name: column([row[i] for row in batch]) for i, name in enumerate(columns)})
        if writer is None:
            table = table.replace_schema_metadata({"leukodx": _atomic.dumps(header)})
            writer = pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table.cast(writer.schema))
        batch.clear()

    for line in lines:
        batch.append(line)
        if len(batch) >= group:
            flush()
    if batch or writer is None:
        flush()
    writer.close()
