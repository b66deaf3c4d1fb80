"""The on-disk spool: batches the store could not take yet, kept in order under a byte bound.

When the store is down or falls behind, the writer appends batches here instead of holding them
in memory, and writes them to the store in order once it accepts writes again. The spool is a
folder of segment files; each record is::

    b"WSP1" | payload length (u32) | CRC-32 of the payload (u32) | payload
    payload = meta length (u32) | meta (JSON: series, stream, index fields, uid) | encoded columns

Records are appended with one ``write`` each, so a process killed mid-write leaves at most one torn
record at the end of the newest segment: the next open finds it (short, bad magic or bad CRC),
cuts it off and reports it; it never fails to start. A ``cursor`` file names the next record to
write to the store; a segment whose records are all written is deleted. A batch written again
after a crash (the cursor lagging the store) is recognised by its ``uid`` and stored once.

Past ``max_bytes`` the oldest segments are dropped whole; the caller records what they held as
gaps. A process crash loses nothing appended; a power loss may lose the records appended since the
last ``fsync`` (at most ``SYNC_EVERY`` seconds before). When the disk fills up, an append fails
with :class:`SpoolWriteError` saying how many records it took; a record cut short is truncated
away, so the segment stays readable.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from wadm.records import GAPS, BatchKey, Market, Venue
from wadm.store.codec import Batch

__all__ = ["Spool", "SpoolRecord", "SpoolSummary", "SpoolWriteError"]

log = logging.getLogger(__name__)

MAGIC = b"WSP1"
_HEAD = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
_META = struct.Struct("<I")
SEGMENT_BYTES = 16 * 1024 * 1024  # a segment is closed past this size (and dropped whole)
MIN_SEGMENT_BYTES = 64 * 1024  # ... or past an eighth of the bound, but not below this
SYNC_EVERY = 1.0  # seconds between fsyncs of the newest segment


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled batch: its series, the stream whose rows it holds, and when it was spooled."""

    key: BatchKey
    stream: str
    batch: Batch
    at: int  # wall clock ns when it was appended


class SpoolWriteError(OSError):
    """Appending to the spool failed (a full or failing disk) after ``written`` of the records."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.written = written


@dataclass
class SpoolSummary:
    """What one segment holds, per series: (stream, first start, last end, rows)."""

    series: dict[BatchKey, tuple[str, int, int, int]] = field(default_factory=dict)
    records: int = 0
    first_at: int | None = None
    uncarried: list[SpoolRecord] = field(default_factory=list)  # of a dropped segment: kept records not carried over

    def add(self, record: SpoolRecord) -> None:
        b = record.batch
        found = self.series.get(record.key)
        self.series[record.key] = (record.stream, b.start, b.end, b.count) if found is None else (
            found[0], min(found[1], b.start), max(found[2], b.end), found[3] + b.count)
        self.records += 1
        if self.first_at is None:
            self.first_at = record.at


@dataclass
class _Segment:
    path: Path
    size: int
    summary: SpoolSummary
    # The newest record per series: (its batch's last event time, its offset). By time, not by
    # place: a batch that failed to be written while newer ones waited here is appended after them.
    newest: dict[BatchKey, tuple[int, int]] = field(default_factory=dict)

    def saw(self, record: SpoolRecord, offset: int) -> None:
        known = self.newest.get(record.key)
        if known is None or record.batch.end >= known[0]:
            self.newest[record.key] = (record.batch.end, offset)


def _encode(record: SpoolRecord) -> bytes:
    b, key = record.batch, record.key
    meta = orjson.dumps({
        "table": key.table, "venue": str(key.venue), "market": str(key.market), "symbol": key.symbol,
        "stream": record.stream, "start": b.start, "end": b.end, "count": b.count, "first_id": b.first_id,
        "last_id": b.last_id, "uid": b.uid.hex(), "at": record.at,
    })
    payload = _META.pack(len(meta)) + meta + b.data
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _record(meta_bytes: bytes, data: bytes) -> SpoolRecord:
    meta = orjson.loads(meta_bytes)
    key = BatchKey(meta["table"], Venue(meta["venue"]), Market(meta["market"]), meta["symbol"])
    batch = Batch(meta["start"], meta["end"], meta["count"], meta["first_id"], meta["last_id"], data,
                  bytes.fromhex(meta["uid"]))
    return SpoolRecord(key, meta["stream"], batch, meta["at"])


def _scan(path: Path, start: int = 0, *, data: bool = False, verify: bool = False
          ) -> Iterator[tuple[int, int, SpoolRecord | None]]:
    """(offset, length, record) of each whole record from ``start``, then a last ``(offset, 0,
    None)`` where the file stops holding whole records (its size when it ends cleanly).

    Records carry their columns with ``data``; ``verify`` checks each one's CRC (a record cut
    short or damaged ends the scan). Without either, only the meta is read.
    """
    with path.open("rb") as f:
        total = os.fstat(f.fileno()).st_size
        f.seek(start)
        offset = start
        while True:
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size:
                break
            magic, length, crc = _HEAD.unpack(head)
            if magic != MAGIC or length < _META.size or offset + _HEAD.size + length > total:
                break
            if data or verify:
                payload = f.read(length)
                if len(payload) < length or (verify and zlib.crc32(payload) != crc):
                    break
                (size,) = _META.unpack_from(payload)
                meta, columns = payload[_META.size:_META.size + size], payload[_META.size + size:]
            else:
                raw = f.read(_META.size)
                if len(raw) < _META.size:
                    break
                (size,) = _META.unpack(raw)
                meta, columns = f.read(size), b""
                if len(meta) < size:
                    break
                f.seek(offset + _HEAD.size + length)
            try:
                record = _record(meta, columns if data else b"")
            except (ValueError, KeyError, TypeError):
                break
            yield offset, _HEAD.size + length, record
            offset += _HEAD.size + length
    yield offset, 0, None


class Spool:
    """A bounded, ordered, crash-safe queue of batches on disk. See the module docstring.

    Args:
        folder: where the segments live (created if needed).
        max_bytes: the bound; past it the oldest segments are dropped.
        segment_bytes: the size past which a new segment is started.
        keep: tables whose records a drop carries over to the end of the spool (they are small,
            and the gaps that record a drop must not be dropped in turn).
    """

    def __init__(self, folder: Path, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES,
                 keep: frozenset[str] = frozenset({GAPS})) -> None:
        self.folder = folder
        self.keep = keep  # tables never dropped: their records move to the end instead (the gaps of a drop)
        self.max_bytes = max_bytes
        # Segments are dropped whole and the newest never: small enough that the bound holds (within
        # an eighth or so), whatever the bound.
        self.segment_bytes = min(segment_bytes, max(MIN_SEGMENT_BYTES, max_bytes // 8))
        self._segments: list[_Segment] = []
        self._cursor = 0  # offset of the next record to write to the store, in the first segment
        # Where the newest data written to the store from here ends, per series (kept with the
        # cursor): a batch that failed while newer ones waited here is appended after them, and
        # once those are written it is not where its series resumes.
        self._written: dict[BatchKey, int] = {}
        self._fd: int | None = None  # the newest segment, open for appending
        self._synced = 0.0
        self._next_name = 0
        self._reading = 0  # segments (from the first) that records from head() being written come from: kept
        self.torn_bytes = 0  # torn tails cut off when this process opened the spool
        self.sync_errors = 0  # fsyncs and cursor writes that failed (a full or failing disk)
        self._cursor_failing = False
        self.dropped_batches = 0
        self.dropped_rows = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes of records not yet written to the store."""
        return sum(s.size for s in self._segments) - self._cursor

    @property
    def batches(self) -> int:
        """Records not yet written to the store."""
        return sum(s.summary.records for s in self._segments)

    @property
    def empty(self) -> bool:
        return self.batches == 0

    def oldest_at(self) -> int | None:
        """When the oldest record not yet written was spooled (wall clock ns), or None."""
        for segment in self._segments:
            if segment.summary.records:
                return segment.summary.first_at
        return None

    def covering(self, key: BatchKey) -> list[tuple[int, int, int]]:
        """(first start, last end, rows) of what each segment holds of ``key``."""
        out = []
        for segment in self._segments:
            found = segment.summary.series.get(key)
            if found is not None:
                out.append(found[1:])
        return out

    # -- open and close ------------------------------------------------------------------------

    def open(self) -> None:
        """Read what an earlier process left: segments, the cursor; cut off a torn tail."""
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = sorted(p for p in self.folder.glob("*.seg") if p.stem.isdigit())
        cursor_name, cursor = self._read_cursor()
        for i, path in enumerate(paths):
            self._next_name = max(self._next_name, int(path.stem) + 1)
            if cursor_name is not None and path.name < cursor_name:
                path.unlink()  # written before the cursor moved past it: a delete cut short
                continue
            start = cursor if path.name == cursor_name else 0
            segment = _Segment(path, 0, SpoolSummary())
            end = start
            # Only the newest segment can end in a record cut short: its records are checked whole.
            for offset, _, record in _scan(path, start, verify=i == len(paths) - 1):
                if record is None:
                    end = offset
                    break
                segment.summary.add(record)
                segment.saw(record, offset)
            size = path.stat().st_size
            if end < size:
                self.torn_bytes += size - end
                log.error("The spool segment %s ends in %d bytes that are not a whole record (a write cut short "
                          "by a crash or kill); they were cut off, the %d records before them are kept",
                          path.name, size - end, segment.summary.records,
                          extra={"reason": "spool_torn", "bytes": size - end})
                with path.open("r+b") as f:
                    f.truncate(end)
            segment.size = end
            if not self._segments:
                self._cursor = start
            self._segments.append(segment)
        if self.batches == 0:
            self._clear()
        else:
            log.warning("The spool holds %d batches (%d bytes) that an earlier run could not store; they are "
                        "written first", self.batches, self.bytes)

    def close(self) -> None:
        """Sync and close the newest segment."""
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None

    def _sync(self) -> None:
        """fsync the newest segment. A failure is logged and counted, not raised: the records are
        written (this process reads them back); only a power loss could take them."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.sync_errors += 1
            log.error("The spool segment could not be synced to disk (%s)", exc)

    # -- writing ---------------------------------------------------------------------------------

    def append(self, records: list[SpoolRecord]) -> list[SpoolSummary]:
        """Append records (one write each); returns what was dropped to stay within the bound."""
        self._write(records)
        return self._bound()

    def _write(self, records: list[SpoolRecord]) -> None:
        for done, record in enumerate(records):
            data = _encode(record)
            try:
                if self._fd is None or self._segments[-1].size >= self.segment_bytes:
                    self._start_segment()
                segment = self._segments[-1]
                assert self._fd is not None
                wrote = os.write(self._fd, data)
                if wrote != len(data):  # the disk filled up mid-record: no torn record is left behind
                    self._cut(segment)
                    raise OSError(errno.ENOSPC, f"wrote {wrote} of a record's {len(data)} bytes")
            except OSError as exc:
                raise SpoolWriteError(done, exc) from exc
            segment.saw(record, segment.size)
            segment.size += len(data)
            segment.summary.add(record)
        now = time.monotonic()
        if self._fd is not None and now - self._synced >= SYNC_EVERY:
            self._sync()
            self._synced = now

    def _cut(self, segment: _Segment) -> None:
        """Cut the newest segment back to its whole records after a write cut short. If even that
        fails, the segment takes no more records: readers stop at the part record (it is shorter
        than its length says) and the next record starts a new segment."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, segment.size)
        except OSError as exc:
            log.error("A spool record cut short could not be cut off (%s); a new segment is started", exc)
            os.close(self._fd)
            self._fd = None

    def _start_segment(self) -> None:
        self.close()
        path = self.folder / f"{self._next_name:012d}.seg"
        self._next_name += 1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(_Segment(path, 0, SpoolSummary()))
        if len(self._segments) == 1:
            self._cursor = 0
            self._write_cursor()

    def _bound(self) -> list[SpoolSummary]:
        """Drop the oldest segments (not one being written to the store, not the newest) past the bound."""
        dropped: list[SpoolSummary] = []
        first = self._reading
        older = len(self._segments) - first - 1  # (records carried over land after these: they are not dropped again)
        while self.bytes > self.max_bytes and older > 0:
            older -= 1
            segment = self._segments.pop(first)
            lost = SpoolSummary()  # what the store did not get of it
            carried: list[SpoolRecord] = []
            try:
                for _, _, record in _scan(segment.path, self._cursor if first == 0 else 0, data=True):
                    if record is not None and record.key.table in self.keep:
                        carried.append(record)
                    elif record is not None:
                        lost.add(record)
            except OSError as exc:  # unreadable: what it held is known, its gap records are lost with it
                log.error("The spool segment %s could not be read before it was dropped (%s)", segment.path.name, exc)
                lost = segment.summary
            segment.path.unlink(missing_ok=True)
            if first == 0:
                self._cursor = 0
                self._write_cursor()
            try:
                self._write(carried)
            except SpoolWriteError as exc:
                lost.uncarried = carried[exc.written:]  # the caller keeps them another way
            self.dropped_batches += lost.records
            self.dropped_rows += sum(rows for _, _, _, rows in lost.series.values())
            dropped.append(lost)
        return dropped

    # -- reading ---------------------------------------------------------------------------------

    def head(self, max_batches: int, max_rows: int) -> list[SpoolRecord]:
        """The oldest records not yet written (at least one when any), within the limits.

        Until :meth:`commit` or :meth:`release`, their segment is not dropped.
        """
        out: list[SpoolRecord] = []
        rows = 0
        offset = self._cursor
        self._reading = 0
        for index, segment in enumerate(self._segments):
            for _, _, record in _scan(segment.path, offset, data=True):
                if record is None:
                    break
                if out and (len(out) >= max_batches or rows + record.batch.count > max_rows):
                    return out
                out.append(record)
                rows += record.batch.count
                self._reading = index + 1
            offset = 0
        return out

    def release(self) -> None:
        """The records of :meth:`head` were not written: they stay first."""
        self._reading = 0

    def commit(self, records: list[SpoolRecord]) -> None:
        """The records :meth:`head` gave are in the store."""
        self._reading = 0
        uids = [r.batch.uid for r in records]
        for done in records:
            self._written[done.key] = max(done.batch.end, self._written.get(done.key, done.batch.end))
        while uids and self._segments:
            segment = self._segments[0]
            offset = self._cursor
            for offset, length, record in _scan(segment.path, self._cursor):
                if record is None or not uids or record.batch.uid != uids[0]:
                    break
                _forget(segment.summary, record)
                uids.pop(0)
                offset += length
            moved = offset != self._cursor
            self._cursor = offset
            if self._cursor >= segment.size and (len(self._segments) > 1 or self._fd is None):
                self._segments.pop(0)
                segment.path.unlink(missing_ok=True)
                self._cursor = 0
            elif not moved:
                break
        if self._segments and self._segments[0].summary.records:
            for _, _, record in _scan(self._segments[0].path, self._cursor):
                self._segments[0].summary.first_at = None if record is None else record.at
                break
        if self.batches == 0:
            self._clear()
        else:
            self._write_cursor()

    def newest(self, key: BatchKey) -> SpoolRecord | None:
        """The spooled record of ``key`` not yet written whose data ends last (with its columns), or None.

        None as well when a record written from here already ended later: the store holds the newest rows.
        """
        found: tuple[int, _Segment, int] | None = None
        for segment in self._segments:
            newest = segment.newest.get(key)
            if newest is None or (segment is self._segments[0] and newest[1] < self._cursor):
                continue  # that one is written (and counted in _written)
            if found is None or newest[0] >= found[0]:
                found = (newest[0], segment, newest[1])
        if found is None or found[0] < self._written.get(key, -1):
            return None
        for _, _, record in _scan(found[1].path, found[2], data=True):
            return record
        return None

    def _clear(self) -> None:
        """Everything is written: start again with no segment."""
        self.close()
        for segment in self._segments:
            segment.path.unlink(missing_ok=True)
        self._segments = []
        self._cursor = 0
        self._written = {}
        (self.folder / "cursor").unlink(missing_ok=True)

    def _read_cursor(self) -> tuple[str | None, int]:
        """The cursor file: the first segment's name and offset, then (a later line, optional) where
        each series' written data ends."""
        try:
            first, *rest = (self.folder / "cursor").read_text().splitlines()
            name, offset = first.split()
        except (OSError, ValueError):
            return None, 0
        try:
            for table, venue, market, symbol, end in orjson.loads(rest[0]) if rest else []:
                self._written[BatchKey(table, Venue(venue), Market(market), symbol)] = int(end)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            self._written = {}  # only where a rare straggler resumes depends on it
        try:
            return name, int(offset)
        except ValueError:
            return None, 0

    def _write_cursor(self) -> None:
        if not self._segments:
            return
        written = orjson.dumps([[k.table, str(k.venue), str(k.market), k.symbol, end]
                                for k, end in self._written.items()]).decode()
        tmp = self.folder / "cursor.tmp"
        try:
            tmp.write_text(f"{self._segments[0].path.name} {self._cursor}\n{written}\n")
            tmp.replace(self.folder / "cursor")
        except OSError as exc:
            # A full disk: the next commit tries again. A cursor left behind only means records
            # written again after a restart, which the store recognises by their uid.
            self.sync_errors += 1
            if not self._cursor_failing:
                log.error("The spool cursor could not be written (%s); tried again at each write, said again "
                          "once it works", exc)
            self._cursor_failing = True
        else:
            if self._cursor_failing:
                log.warning("The spool cursor is written again")
            self._cursor_failing = False


def _forget(summary: SpoolSummary, record: SpoolRecord) -> None:
    """Take a written record out of its segment's summary (the window of its series stays as wide)."""
    summary.records -= 1
    found = summary.series.get(record.key)
    if found is not None:
        rows = found[3] - record.batch.count
        if rows <= 0:
            del summary.series[record.key]
        else:
            summary.series[record.key] = (found[0], found[1], found[2], rows)
