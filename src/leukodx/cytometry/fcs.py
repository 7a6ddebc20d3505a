"""Reading FCS 2.0 / 3.0 / 3.1 files: metadata through FlowIO, events streamed in chunks.

FlowIO parses the HEADER and TEXT segments (keywords, channels, spillover). Event data are
read here, chunk by chunk through a read-only memory map, because FlowIO always loads a
whole file and makes a float64 copy of it: a 10-million-event file would need gigabytes.
Streaming keeps memory bounded by the chunk size, and the values are checked equal to
FlowIO's own ``as_array`` in the tests for every readable file in ``flow/formats``.

Quirks found in real files are handled and recorded in ``FCSFile.warnings``:
- a DATA end offset off by one byte (Miltenyi FCS 3.1): read, with a warning;
- DATA offsets blank in the HEADER (files > 99,999,999 bytes): taken from $BEGINDATA/$ENDDATA;
- several data sets in one file (Guava Muse): data set 1 by default, ``dataset`` picks another;
- duplicate channel names: later copies get a ``#2``, ``#3`` suffix;
- integer data above its channel's $PnR bit mask (all values out of range = a broken file):
  refused, rather than silently masked into different numbers.

Everything else that would make a read silently wrong is refused with one line naming the keyword:
a missing $BYTEORD (never guessed), $TOT / $PAR that are not counts, a $TOT that disagrees with the
DATA segment's length beyond the known off-by-one, an unknown $DATATYPE, $PnB / $PnR that are not
numbers. A spillover matrix with non-finite values or that cannot be inverted is skipped with a note.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from leukodx.cytometry.markers import canonical_marker
from leukodx.errors import DataNotFoundError, InvalidInputError, LeukodxError, first_line

HEADER_BYTES = 58
SUPPORTED_VERSIONS = ("2.0", "3.0", "3.1")
DEFAULT_CHUNK_EVENTS = 262_144

_SCATTER = re.compile(r"^(FSC|SSC|FS|SS)\b|^(HDR-)?(FSC|SSC)|FORWARD|SIDE", re.IGNORECASE)
_TIME = re.compile(r"^(time|hdr-t)$", re.IGNORECASE)


@dataclass(frozen=True)
class Channel:
    """One parameter of an FCS file."""

    index: int          # 0-based column in the event matrix
    pnn: str            # $PnN, the detector name
    pns: str            # $PnS, the stain / marker label ('' when absent)
    label: str          # unique name within the file ($PnN, de-duplicated)
    marker: str         # canonical marker ('cd45'), '' for scatter, time and unnamed channels
    kind: str           # 'scatter' | 'time' | 'fluorescence' (or mass channel)
    range: float        # $PnR
    bits: int | None    # $PnB (None for '*', ASCII data)
    log_decades: float  # $PnE f1 (0 = linear)
    log_zero: float     # $PnE f2
    gain: float         # $PnG


@dataclass
class FCSFile:
    """Metadata of one data set in an FCS file; ``iter_events`` streams its events."""

    path: Path
    version: str
    event_count: int
    channels: list[Channel]
    datatype: str                   # 'F' | 'D' | 'I' | 'A'
    byteorder: str                  # '<' or '>'
    data_start: int                 # absolute byte offset of the first event
    text: dict[str, str]
    dataset: int = 0
    n_datasets: int = 1
    warnings: list[str] = field(default_factory=list)
    spillover: tuple[list[str], np.ndarray] | None = None
    _fallback: object | None = None  # FlowIO FlowData for layouts not memory-mappable

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.channels]

    @property
    def markers(self) -> list[str]:
        return [c.marker for c in self.channels]

    @property
    def marker_sources(self) -> list[str]:
        """Per channel, the label that names its antigen ($PnS when it adds to $PnN), '' for scatter/time:
        what ``align_markers`` should match against."""
        return [(c.pns if c.pns and c.pns.lower() != c.pnn.lower() else c.pnn) if c.marker else "" for c in self.channels]

    @property
    def channel_count(self) -> int:
        return len(self.channels)

    def summary(self) -> dict:
        """What ``leukodx flow info`` prints: JSON-ready."""
        return {
            "file": str(self.path), "version": self.version, "events": self.event_count,
            "channels": [{"index": c.index + 1, "name": c.label, "stain": c.pns, "marker": c.marker, "kind": c.kind,
                          "range": c.range} for c in self.channels],
            "datatype": self.datatype, "dataset": self.dataset + 1, "datasets": self.n_datasets,
            "spillover": None if self.spillover is None else self.spillover[0],
            "cytometer": self.text.get("cyt", ""), "date": self.text.get("date", ""),
            "warnings": list(self.warnings),
        }

    def iter_events(self, chunk_events: int = DEFAULT_CHUNK_EVENTS, scale: bool = True) -> Iterator[np.ndarray]:
        """Yield float64 event blocks of at most ``chunk_events`` rows.

        ``scale`` applies what the file says its stored values mean: log amplification ($PnE),
        gain ($PnG) and the time step ($TIMESTEP), as FlowIO's ``as_array(preprocess=True)``.
        """
        if chunk_events < 1:
            raise InvalidInputError(f"chunk_events must be >= 1, got {chunk_events}")
        if self._fallback is not None:
            whole = self._fallback_array()
            if len(whole) != self.event_count:
                raise InvalidInputError(f"{self.path}: $TOT says {self.event_count} events but the DATA segment "
                                        f"holds {len(whole)}")
            for start in range(0, len(whole), chunk_events):
                block = whole[start:start + chunk_events].copy()
                yield self._scale(block) if scale else block
            return
        dtype, masks = self._layout()
        if self.event_count == 0:
            return
        packed24 = dtype is None  # 24-bit integers have no NumPy type: read bytes, assemble
        mapped = np.memmap(self.path, dtype=np.uint8 if packed24 else dtype, mode="r", offset=self.data_start,
                           shape=(self.event_count, self.channel_count * (3 if packed24 else 1)))
        try:
            for start in range(0, self.event_count, chunk_events):
                block = np.asarray(mapped[start:start + chunk_events])
                if packed24:
                    b = block.reshape(len(block), self.channel_count, 3).astype(np.uint32)
                    order = (0, 1, 2) if self.byteorder == "<" else (2, 1, 0)
                    block = b[..., order[0]] | (b[..., order[1]] << 8) | (b[..., order[2]] << 16)
                if masks is not None:
                    self._check_mask(block, masks, start)
                with np.errstate(invalid="ignore"):  # NaN stored in float data: kept, dropped downstream
                    block = block.astype(np.float64)
                yield self._scale(block) if scale else block
        finally:
            del mapped

    def read(self, scale: bool = True, max_events: int | None = None) -> np.ndarray:
        """All events (or the first ``max_events``) as one (events, channels) float64 array."""
        wanted = self.event_count if max_events is None else min(max_events, self.event_count)
        out = np.empty((wanted, self.channel_count), dtype=np.float64)
        filled = 0
        for block in self.iter_events(scale=scale):
            take = min(len(block), wanted - filled)
            out[filled:filled + take] = block[:take]
            filled += take
            if filled >= wanted:
                break
        return out

    # -- internals -------------------------------------------------------------------------
    def _layout(self) -> tuple[np.dtype | None, np.ndarray | None]:
        if self.datatype in ("F", "D"):
            return np.dtype(self.byteorder + ("f4" if self.datatype == "F" else "f8")), None
        bits = self.channels[0].bits
        dtype = None if bits == 24 else np.dtype(self.byteorder + {8: "u1", 16: "u2", 32: "u4"}[bits])
        masks = np.array([_next_power_of_2(int(c.range)) - 1 for c in self.channels], dtype=np.uint64)
        return dtype, masks

    def _check_mask(self, block: np.ndarray, masks: np.ndarray, start: int) -> None:
        over = block.astype(np.uint64) > masks
        if over.any():
            column = int(np.argmax(over.any(axis=0)))
            raise InvalidInputError(
                f"{self.path}: integer event values exceed the channel range ($P{column + 1}R="
                f"{self.channels[column].range:g}) from event {start + int(np.argmax(over[:, column])) + 1}; "
                f"the file's $PnR/$PnB keywords do not describe its data")

    def _scale(self, block: np.ndarray) -> np.ndarray:
        step = self.text.get("timestep", "").strip()
        for c in self.channels:
            if c.kind == "time" and step:
                try:
                    block[:, c.index] *= float(step)
                except ValueError:
                    pass
            if c.log_decades > 0:
                with np.errstate(over="ignore"):  # overflow to inf: dropped as non-finite downstream
                    block[:, c.index] = 10 ** (c.log_decades * block[:, c.index] / c.range) * c.log_zero
            if c.gain not in (0.0, 1.0):
                block[:, c.index] /= c.gain
        return block

    def _fallback_array(self) -> np.ndarray:
        flow = self._fallback
        if flow is True:  # TEXT parsed only so far: let FlowIO parse the data now
            from flowio.exceptions import FlowIOException

            try:
                flow = _flowio_data(self.path, self.dataset, only_text=False, ignore_offset_error=True)[0]
            except LeukodxError:
                raise
            except (FlowIOException, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError,
                    struct.error) as exc:
                raise InvalidInputError(f"{self.path}: cannot read the DATA segment ($DATATYPE {self.datatype}, "
                                        f"$PnB {sorted({c.bits for c in self.channels}, key=str)}): "
                                        f"{type(exc).__name__}: {exc}") from None
            if flow.events is None:
                raise InvalidInputError(f"{self.path}: event data layout ($DATATYPE {self.datatype}, "
                                        f"$PnB {sorted({c.bits for c in self.channels}, key=str)}) is not supported")
            self._fallback = flow
        return np.reshape(np.asarray(flow.events, dtype=np.float64), (-1, self.channel_count))


class _ZeroedDataOffsets(io.FileIO):
    """The file, read-only, with its blank HEADER DATA offsets read as zeros (the standard's
    "look in TEXT" value), so FlowIO can parse it without a copy of the file."""

    _PATCH = (26, b"       0       0")

    def read(self, size: int = -1) -> bytes:
        start = self.tell()
        data = bytearray(super().read(size))
        lo, patch = self._PATCH
        for i, byte in enumerate(patch):
            if 0 <= lo + i - start < len(data):
                data[lo + i - start] = byte
        return bytes(data)


def _next_power_of_2(x: int) -> int:
    return 1 if x <= 0 else 2 ** (x - 1).bit_length()


def _parse_header(path: Path, size: int) -> dict:
    if size < HEADER_BYTES:
        raise InvalidInputError(f"{path}: not an FCS file ({size} bytes, shorter than an FCS header)")
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    if not head.startswith(b"FCS"):
        raise InvalidInputError(f"{path}: not an FCS file (it does not start with 'FCS')")
    version = head[3:6].decode("latin-1")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidInputError(f"{path}: FCS version {version!r} is not supported (2.0, 3.0, 3.1)")

    def offset(lo: int, hi: int, what: str, allow_blank: bool) -> int:
        raw = head[lo:hi].strip()
        if not raw and allow_blank:
            return 0
        if not raw.isdigit():
            raise InvalidInputError(f"{path}: the FCS header's {what} offset is not a number ({head[lo:hi]!r})")
        return int(raw)

    return {
        "version": version,
        "text": (offset(10, 18, "TEXT start", False), offset(18, 26, "TEXT end", False)),
        "data": (offset(26, 34, "DATA start", True), offset(34, 42, "DATA end", True)),
        "blank_data": not head[26:42].strip(),
    }


def _flowio_data(path: Path, dataset: int, only_text: bool, ignore_offset_error: bool = False,
                 source: object | None = None) -> tuple[object, int, int]:
    """FlowIO FlowData for data set ``dataset``, how many data sets the file holds, and the byte offset
    where that data set begins (its HEADER and TEXT offsets are relative to it)."""
    import flowio
    from flowio.exceptions import MultipleDataSetsError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-standard widths, off-by-one: recorded by us instead
        try:
            flow = flowio.FlowData(source or str(path), only_text=only_text, ignore_offset_error=ignore_offset_error,
                                   ignore_offset_discrepancy=source is not None)
            sets, flows = 1, [flow]
        except MultipleDataSetsError:
            try:
                flows = flowio.read_multiple_data_sets(str(path), only_text=only_text,
                                                       ignore_offset_error=ignore_offset_error)
            except MultipleDataSetsError as exc:  # e.g. a negative $NEXTDATA
                raise InvalidInputError(f"{path}: $NEXTDATA does not lead to a valid next data set ({exc})") from None
            sets = len(flows)
    if dataset >= sets or dataset < 0:
        raise InvalidInputError(f"{path}: holds {sets} data set(s); data set {dataset + 1} does not exist")
    base = sum(int(f.text.get("nextdata", "0").strip() or 0) for f in flows[:dataset])
    return flows[dataset], sets, base


def _channel_kind(pnn: str) -> str:
    if _TIME.match(pnn.strip()):
        return "time"
    if _SCATTER.search(pnn.strip()) and not re.search(r"FITC|PE|APC|CD\d", pnn, re.IGNORECASE):
        return "scatter"
    return "fluorescence"


def _channels(flow: object, path: Path) -> tuple[list[Channel], list[str]]:
    notes: list[str] = []
    channels: list[Channel] = []
    seen: dict[str, int] = {}
    text = flow.text
    for number in sorted(flow.channels):
        meta = flow.channels[number]
        pnn = (meta.get("pnn") or f"P{number}").strip()
        pns = (meta.get("pns") or "").strip()
        label = pnn
        if label.lower() in seen:
            seen[label.lower()] += 1
            label = f"{pnn}#{seen[pnn.lower()]}"
            notes.append(f"duplicate channel name {pnn!r}: channel {number} renamed {label!r}")
        else:
            seen[label.lower()] = 1
        bits_raw = text.get(f"p{number}b", "").strip()
        if not (bits_raw.isdigit() or bits_raw == "*"):
            raise InvalidInputError(f"{path}: $P{number}B {bits_raw!r} is not a bit width (a number or '*')")
        value_range = float(meta.get("pnr", 0) or 0)
        if not (np.isfinite(value_range) and value_range >= 0):
            raise InvalidInputError(f"{path}: $P{number}R {text.get(f'p{number}r', '')!r} is not a finite range")
        kind = _channel_kind(pnn)
        source = pns if pns and pns.lower() != pnn.lower() else pnn
        channels.append(Channel(
            index=number - 1, pnn=pnn, pns=pns, label=label,
            marker="" if kind != "fluorescence" else canonical_marker(source),
            kind=kind, range=value_range, bits=int(bits_raw) if bits_raw.isdigit() else None,
            log_decades=float(meta["pne"][0]), log_zero=float(meta["pne"][1]), gain=float(meta.get("png", 1.0)),
        ))
    if sorted(flow.channels) != list(range(1, len(flow.channels) + 1)):
        raise InvalidInputError(f"{path}: channel numbers are not 1..$PAR ({sorted(flow.channels)[:5]}...)")
    for marker in sorted({c.marker for c in channels if c.marker}):
        holders = [c.label for c in channels if c.marker == marker]
        if len(holders) > 1:
            notes.append(f"marker {marker!r} is on several channels: {', '.join(holders)}")
    return channels, notes


def open_fcs(path: str | os.PathLike, dataset: int = 0) -> FCSFile:
    """Read the metadata of one data set of an FCS file; raise a one-line error if it cannot be used."""
    from flowio.exceptions import DataOffsetDiscrepancyError, FCSParsingError

    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, not an FCS file")
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    header = _parse_header(path, size)
    notes: list[str] = []
    text_start, text_end = header["text"]
    if text_end >= size or text_start < HEADER_BYTES or text_end <= text_start:
        raise InvalidInputError(f"{path}: truncated or corrupt FCS file (TEXT segment {text_start}-{text_end}, "
                                f"file has {size} bytes)")
    source = None
    if header["blank_data"]:
        # FlowIO cannot parse blank HEADER offsets; the TEXT keywords hold them (FCS 3.0 large files)
        source = _ZeroedDataOffsets(path)
        notes.append("DATA offsets blank in the HEADER: taken from $BEGINDATA/$ENDDATA")
    elif header["data"][1] >= size:
        raise InvalidInputError(f"{path}: truncated FCS file: DATA segment ends at byte {header['data'][1]}, "
                                f"file has {size} bytes")
    try:
        flow, n_sets, base = _flowio_data(path, dataset, only_text=True, source=source)
    except LeukodxError:
        raise
    except DataOffsetDiscrepancyError as exc:
        raise InvalidInputError(f"{path}: HEADER and TEXT disagree on where the DATA segment is ({exc})") from None
    except FCSParsingError as exc:
        message = str(exc).replace(str(path), "").strip()
        if "greater than file size" in message:
            raise InvalidInputError(f"{path}: truncated FCS file: its DATA segment runs past the end of the file") from None
        raise InvalidInputError(f"{path}: cannot parse FCS: {message}") from None
    except PermissionError:
        raise InvalidInputError(f"{path}: permission denied (the file cannot be read by this user)") from None
    except Exception as exc:  # noqa: BLE001 - FlowIO parsing untrusted bytes: whatever it raises, the file is unusable
        raise InvalidInputError(f"{path}: corrupt FCS TEXT segment ({type(exc).__name__}: {first_line(exc, 200)})") from None
    if n_sets > 1:
        notes.append(f"file holds {n_sets} data sets; reading data set {dataset + 1}")
    text = dict(flow.text)
    for key in ("tot", "par", "datatype", "byteord"):
        if key not in text:
            raise InvalidInputError(f"{path}: required keyword ${key.upper()} missing from TEXT")
    for key in ("tot", "par"):
        if not text[key].strip().isdigit():
            raise InvalidInputError(f"{path}: ${key.upper()} {text[key]!r} is not a count")
    mode = text.get("mode", "L").strip().upper()
    if mode != "L":
        raise InvalidInputError(f"{path}: $MODE {mode} (histogram data) is not list-mode event data")
    event_count, par = int(text["tot"]), int(text["par"])
    channels, channel_notes = _channels(flow, path)
    notes += channel_notes
    if len(channels) != par:
        raise InvalidInputError(f"{path}: $PAR says {par} channels but {len(channels)} $PnN keywords found")

    datatype = text["datatype"].strip().upper()
    if datatype not in ("I", "F", "D", "A"):
        raise InvalidInputError(f"{path}: $DATATYPE {text['datatype']!r} is not one of I, F, D, A")
    byteord = text["byteord"].replace(" ", "")
    byteorder = ">" if byteord in ("4,3,2,1", "2,1") else "<"
    if byteord not in ("1,2,3,4", "1,2", "1", "4,3,2,1", "2,1"):
        raise InvalidInputError(f"{path}: $BYTEORD {byteord!r} is neither little- (1,2,3,4) nor big-endian (4,3,2,1)")
    data_start, data_end = _data_offsets(header, text, path, flow, base)
    bits = {c.bits for c in channels}
    mappable = datatype in ("F", "D") or (datatype == "I" and len(bits) == 1 and bits <= {8, 16, 24, 32})
    width = {"F": 4, "D": 8}.get(datatype) or (next(iter(bits)) // 8 if mappable else 0)
    result = FCSFile(path=path, version=header["version"], event_count=event_count, channels=channels,
                     datatype=datatype, byteorder=byteorder, data_start=data_start, text=text,
                     dataset=dataset, n_datasets=n_sets, warnings=notes)
    if mappable:
        needed = event_count * par * width
        declared = data_end - data_start + 1 if data_end else needed
        if data_start + needed > size:
            raise InvalidInputError(f"{path}: truncated FCS file: {event_count} events x {par} channels need "
                                    f"{needed} bytes from byte {data_start}, file has {size} bytes")
        if declared < needed:
            raise InvalidInputError(f"{path}: DATA segment is {declared} bytes but $TOT x $PAR needs {needed}: "
                                    f"wrong offsets or wrong $TOT")
        if declared - needed >= width:  # more than the off-by-one of some writers: $TOT is wrong
            raise InvalidInputError(f"{path}: $TOT says {event_count} events but the DATA segment holds "
                                    f"{declared // (par * width)} ({declared} bytes): wrong $TOT or wrong offsets")
        if declared > needed:
            notes.append(f"DATA segment declares {declared - needed} byte(s) more than the events need "
                         "(end offset off by one is a known FCS 3.1 writer quirk)")
    else:
        result._fallback = True
        notes.append(f"data type {datatype} with bit widths {sorted(b for b in bits if b)}: read whole by FlowIO")
    result.spillover = _spillover(text, result.labels, [c.pnn for c in channels], path, notes)
    return result


def _data_offsets(header: dict, text: dict, path: Path, flow: object, base: int) -> tuple[int, int]:
    start, end = flow.header.get("data_start", 0), flow.header.get("data_stop", 0)
    if not start:  # zero (or blank) in the HEADER: the TEXT keywords hold them
        try:
            start, end = int(text.get("begindata", "0").strip()), int(text.get("enddata", "0").strip())
        except ValueError:
            raise InvalidInputError(f"{path}: $BEGINDATA/$ENDDATA are not numbers") from None
    if start <= 0:
        raise InvalidInputError(f"{path}: no DATA offset in HEADER or TEXT")
    return base + start, base + end


def _spillover(text: dict, labels: list[str], pnns: list[str], path: Path, notes: list[str]):
    raw = next((text[k] for k in ("spillover", "spill", "comp") if text.get(k, "").strip()), None)
    if raw is None:
        return None
    parts = [p.strip() for p in raw.split(",")]
    try:
        n = int(parts[0])
        names = parts[1:1 + n]
        values = np.array([float(v) for v in parts[1 + n:1 + n + n * n]], dtype=np.float64)
        if len(names) != n or values.size != n * n:
            raise ValueError("size")
    except (ValueError, IndexError):
        notes.append("spillover keyword present but not a valid n,names,values matrix: compensation skipped")
        return None
    if not np.isfinite(values).all():
        notes.append("spillover matrix holds non-finite values: compensation skipped")
        return None
    if n == 0 or np.linalg.cond(values.reshape(n, n)) > 1e12:
        notes.append("spillover matrix cannot be inverted: compensation skipped")
        return None
    missing = [name for name in names if name not in pnns]
    if missing:
        notes.append(f"spillover names channels not in the file ({', '.join(missing)}): compensation skipped")
        return None
    return names, values.reshape(n, n)
