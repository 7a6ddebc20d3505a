"""Rewrite a real FCS file with changed keywords or data: the FCS half of the fuzz suite.

``FCSParts.read`` splits a file into HEADER offsets, the ordered TEXT keywords and the DATA bytes;
``build`` writes them back as a consistent file (offsets recomputed) unless told to keep a field
inconsistent, so each mutation tests one thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FCSParts:
    version: bytes
    keywords: list[tuple[str, str]]
    data: bytes
    delimiter: bytes = b"|"
    tail: bytes = b""  # bytes after DATA (analysis, further data sets)
    header_override: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "FCSParts":
        raw = Path(path).read_bytes()
        t0, t1 = int(raw[10:18]), int(raw[18:26])
        d0, d1 = int(raw[26:34] or 0), int(raw[34:42] or 0)
        text = raw[t0:t1 + 1]
        delim = text[:1]
        tokens = text[1:].split(delim)
        if tokens and tokens[-1] == b"":
            tokens = tokens[:-1]
        keywords = [(tokens[i].decode("latin-1"), tokens[i + 1].decode("latin-1"))
                    for i in range(0, len(tokens) - 1, 2)]
        if not d0:
            kw = {k.upper(): v for k, v in keywords}
            d0, d1 = int(kw["$BEGINDATA"]), int(kw["$ENDDATA"])
        return cls(raw[3:6], keywords, raw[d0:d1 + 1], delim, raw[d1 + 1:])

    # -- keyword edits -----------------------------------------------------------------
    def get(self, key: str) -> str | None:
        return next((v for k, v in self.keywords if k.upper() == key.upper()), None)

    def set(self, key: str, value: str) -> "FCSParts":
        for i, (k, _) in enumerate(self.keywords):
            if k.upper() == key.upper():
                self.keywords[i] = (k, value)
                return self
        self.keywords.append((key, value))
        return self

    def drop(self, key: str) -> "FCSParts":
        self.keywords = [(k, v) for k, v in self.keywords if k.upper() != key.upper()]
        return self

    # -- writing -------------------------------------------------------------------------
    def build(self, fix_offsets: bool = True) -> bytes:
        d = self.delimiter.decode("latin-1")
        keywords = [(k, v) for k, v in self.keywords if k.upper() not in ("$BEGINDATA", "$ENDDATA")]

        def text_for(begin: int, end: int) -> bytes:
            kws = keywords + ([("$BEGINDATA", str(begin)), ("$ENDDATA", str(end))] if fix_offsets else
                              [(k, v) for k, v in self.keywords if k.upper() in ("$BEGINDATA", "$ENDDATA")])
            body = d + d.join(f"{k.replace(d, d + d)}{d}{v.replace(d, d + d)}" for k, v in kws) + d
            return body.encode("latin-1")

        begin = 58
        text = text_for(0, 0)
        for _ in range(3):  # the offsets' own digits change the TEXT length: iterate to a fixed point
            d0 = begin + len(text)
            d1 = d0 + len(self.data) - 1
            text = text_for(d0, d1)
        d0 = begin + len(text)
        d1 = d0 + len(self.data) - 1
        offsets = {"text": (begin, begin + len(text) - 1), "data": (d0, d1) if d1 <= 99_999_999 else (0, 0)}
        offsets.update(self.header_override)
        header = (b"FCS" + self.version + b"    " +
                  b"".join(f"{v:>8}".encode() for pair in (offsets["text"], offsets["data"]) for v in pair) +
                  f"{0:>8}{0:>8}".encode())
        return header + text + self.data + self.tail

    def write(self, path: Path, **kw) -> Path:
        Path(path).write_bytes(self.build(**kw))
        return Path(path)
