"""Query parameter parsing shared by resources: times, windows, counts, choices, symbols, cursors.

Every failure raises :class:`~wadm.errors.QueryError` (400, ``invalid_parameter``) naming the
parameter, what is allowed, and the value given. A value is echoed ASCII-escaped and cut to about
40 characters (``'aaaa…' (10240 characters)``), so a huge or hostile value never comes back whole.

The grammar is strict on purpose, because clients probe it:

- ``None`` means absent; ``''`` means given empty, which is an error (never "use the default").
  Falcon 4 keeps blank values (``req_options.keep_blank_qs_values`` defaults to ``True``), so
  ``?limit=`` reaches these functions as ``''``.
- Numbers are ASCII digits only: ``int()`` would also take ``'５'``, ``'+5'``, ``' 5'``, ``'5_0'``.
- Times are epoch milliseconds or ISO-8601 in the extended format only, from 2000-01-01 to
  2100-01-01 (UTC); anything else, including non-ASCII look-alikes, is refused.
- ``exchange``/``market`` match ASCII case-insensitively (``BINANCE`` is ``binance``); other
  choices (``interval``, ``channel``...) match exactly.
- Cursors carry the query they belong to (its scope) and are refused with any other.

Functions are pure: the clock comes in as ``now``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import TypeVar

import orjson

from wadm.config import StreamTarget
from wadm.errors import QueryError
from wadm.records import Market, Venue
from wadm.units import NS_PER_MS

__all__ = [
    "MAX_CURSOR_CHARS",
    "MAX_WINDOW_S",
    "TIME_MAX_MS",
    "TIME_MAX_NS",
    "TIME_MIN_MS",
    "TIME_MIN_NS",
    "decode_cursor",
    "encode_cursor",
    "parse_choice",
    "parse_exchange",
    "parse_limit",
    "parse_market",
    "parse_range",
    "parse_symbol",
    "parse_time",
    "parse_window",
    "resolve_series",
    "show",
]

_MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

TIME_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
TIME_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
TIME_MIN_NS = TIME_MIN_MS * NS_PER_MS
"""The earliest time any parameter or cursor may name (2000-01-01T00:00:00Z), epoch ns."""
TIME_MAX_NS = TIME_MAX_MS * NS_PER_MS
"""The latest time any parameter or cursor may name (2100-01-01T00:00:00Z), epoch ns."""
MAX_WINDOW_S = 30 * 86400
MAX_CURSOR_CHARS = 512
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_ECHO_MAX = 40  # characters of a bad value shown back, quotes included

_DIGITS_RE = re.compile(r"[0-9]+")
_COUNT_RE = re.compile(r"[0-9]{1,9}")
_WINDOW_RE = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ISO_RE = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[T ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?"
    r"(?P<tz>Z|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))?)?"
)
_SYMBOL_RE = re.compile(r"[A-Za-z0-9]{2,20}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_SCOPE_PART_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")

_TIME_FORMS = ("epoch milliseconds or ISO-8601 such as 2026-01-02, 2026-01-02T03:04, 2026-01-02T03:04:05.678Z "
               "or 2026-01-02T03:04:05+02:00 (UTC when no offset)")
_TIME_RANGE = (f"between 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z "
               f"(epoch milliseconds {TIME_MIN_MS} to {TIME_MAX_MS})")
_CURSOR_ADVICE = "pass the `next` of the previous page unchanged, with the same other parameters"

_E = TypeVar("_E", bound=enum.StrEnum)


def show(raw: str) -> str:
    """``raw`` for an error message: ASCII-escaped and at most about 40 characters."""
    text = ascii(raw)
    if len(text) <= _ECHO_MAX:
        return text
    cut = min(len(raw), _ECHO_MAX)
    while cut > 1 and len(ascii(raw[:cut])) > _ECHO_MAX - 1:
        cut -= 1
    shown = ascii(raw[:cut])
    return f"{shown[:-1]}…{shown[-1]} ({len(raw)} characters)"


def _bad(name: str, allowed: str, raw: str, hint: str = "") -> QueryError:
    """The usual error: ``<name> must be <allowed>, got <value>[; hint]``."""
    if not hint and not raw.isascii():
        hint = "only ASCII characters are accepted"
    return QueryError(name, f"{name} must be {allowed}, got {show(raw)}" + (f"; {hint}" if hint else ""))


# --- numbers -------------------------------------------------------------------------------------


def parse_limit(raw: str | None, *, default: int, maximum: int, name: str = "limit", minimum: int = 1) -> int:
    """Parse ``limit`` (or another count such as ``depth``): ASCII digits, from ``minimum`` to ``maximum``.

    Args:
        raw: the value as given; ``None`` when absent (then ``default`` is returned).
        default: the value when the parameter is absent.
        maximum: the largest value accepted.
        name: the parameter name, for the error.
        minimum: the smallest value accepted.

    Raises:
        QueryError: for ``''``, signs, spaces, underscores, non-ASCII digits, or a value out of range.
    """
    if raw is None:
        return default
    if not (_COUNT_RE.fullmatch(raw) and minimum <= int(raw) <= maximum):
        raise _bad(name, f"an integer from {minimum} to {maximum} in ASCII digits", raw)
    return int(raw)


_DECIMAL_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?|\.[0-9]{1,12}")


def parse_number(raw: str | None, *, name: str, default: float, minimum: float, maximum: float) -> float:
    """Parse a decimal number (ASCII digits, an optional point; no sign, exponent or ``nan``) in a range.

    Raises:
        QueryError: for ``''``, anything else, or a value out of ``[minimum, maximum]``.
    """
    if raw is None:
        return default
    if not (_DECIMAL_RE.fullmatch(raw) and minimum <= float(raw) <= maximum):
        raise _bad(name, f"a number from {minimum:g} to {maximum:g} such as {default:g}", raw)
    return float(raw)


def parse_decimal(raw: str | None, *, name: str, what: str) -> Decimal | None:
    """Parse a positive exact decimal such as ``10`` or ``0.05`` (at most 12 digits each side of the point).

    Raises:
        QueryError: for ``''``, zero, signs, exponents or anything else.
    """
    if raw is None:
        return None
    if not _DECIMAL_RE.fullmatch(raw) or Decimal(raw) <= 0:
        raise _bad(name, f"{what}: a positive decimal number such as 10 or 0.5", raw)
    return Decimal(raw).normalize()


# --- times ---------------------------------------------------------------------------------------


def parse_time(name: str, raw: str | None) -> int | None:
    """Parse epoch milliseconds or strict ISO-8601 into epoch nanoseconds (``None`` when absent).

    ISO-8601 forms: ``YYYY-MM-DD``, then optionally ``T`` or a space and ``HH:MM``, ``HH:MM:SS`` or
    ``HH:MM:SS.f`` (1 to 9 fraction digits), then optionally ``Z`` or ``±HH:MM`` (UTC when none).
    Times are resolved to the millisecond like the rest of the API: sub-millisecond digits are
    truncated, never rounded. The result lies in [:data:`TIME_MIN_NS`, :data:`TIME_MAX_NS`].

    Raises:
        QueryError: naming ``name`` for any other form (basic-format ``20260101``, week or ordinal
            dates, ``ZZ``, one-digit fields, surrounding spaces, non-ASCII) or a time out of range.
    """
    if raw is None:
        return None
    if _DIGITS_RE.fullmatch(raw):
        return _epoch_ms(name, raw) * NS_PER_MS
    m = _ISO_RE.fullmatch(raw)
    if m is None:
        raise _bad(name, _TIME_FORMS, raw, _time_hint(raw))
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise _bad(name, f"a real calendar date ({_TIME_FORMS})", raw) from None
    hour, minute, second = int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise _bad(name, f"a time of day from 00:00:00 to 23:59:59 ({_TIME_FORMS})", raw)
    offset_min = 0
    if m["sign"]:
        oh, om = int(m["oh"]), int(m["om"])
        if oh > 23 or om > 59:
            raise _bad(name, f"a UTC offset from -23:59 to +23:59 ({_TIME_FORMS})", raw)
        offset_min = (oh * 60 + om) * (-1 if m["sign"] == "-" else 1)
    ms = (days * _MS_PER_DAY + ((hour * 60 + minute - offset_min) * 60 + second) * 1000
          + int((m["f"] or "0")[:3].ljust(3, "0")))
    if not TIME_MIN_MS <= ms <= TIME_MAX_MS:
        raise _bad(name, _TIME_RANGE, raw)
    return ms * NS_PER_MS


def _epoch_ms(name: str, digits: str) -> int:
    """Epoch milliseconds from ASCII digits, within the time bounds."""
    if len(digits) == 8:
        example = f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
        if _ISO_RE.fullmatch(example) is None or not _is_date(example):
            example = "YYYY-MM-DD"
        raise _bad(name, _TIME_FORMS, digits, f"8 digits read as a basic-format date, which is not accepted: "
                                              f"write {example} or give epoch milliseconds")
    value = int(digits) if len(digits) <= 19 else None
    if value is not None and TIME_MIN_MS <= value <= TIME_MAX_MS:
        return value
    hint = ""
    if value is not None:
        for unit, scaled in (("seconds", value * 1000), ("microseconds", value // 1000),
                             ("nanoseconds", value // 1_000_000)):
            if TIME_MIN_MS <= scaled <= TIME_MAX_MS:
                hint = f"that looks like epoch {unit}; give epoch milliseconds ({scaled})"
                break
    raise _bad(name, _TIME_RANGE, digits, hint)


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _time_hint(raw: str) -> str:
    """Why an almost-ISO value failed, when it is a common slip."""
    if len(raw) > 6 and raw[-6] == " " and _ISO_RE.fullmatch(raw[:-6] + "+" + raw[-5:]):
        return "a '+' in a URL query string means a space: write the offset as %2B (e.g. %2B02:00) or use Z"
    return ""


def parse_window(raw: str | None) -> int | None:
    """Parse a window such as ``15m``, ``1h``, ``4h``, ``24h``, ``7d`` (1s to 30d) into nanoseconds.

    The number is 1 to 6 ASCII digits and the unit one of ``s m h d``; ``None`` means absent.
    """
    if raw is None:
        return None
    m = _WINDOW_RE.fullmatch(raw)
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise _bad("window", "an ASCII number and a unit s/m/h/d between 1s and 30d (e.g. 15m, 1h, 4h, 24h, 7d)",
                   raw)
    return seconds * 1_000_000_000


def parse_range(
    start_raw: str | None, end_raw: str | None, window_raw: str | None, *, now: int, default_span: int
) -> tuple[int, int]:
    """Resolve ``start``/``end`` or ``window`` into ``(start, end)`` epoch ns.

    ``window`` means the window ending ``now`` and excludes ``start``/``end``. ``end`` defaults to
    ``now`` and ``start`` to ``default_span`` ns before ``end``; a start derived from a window or
    the default span is clamped to :data:`TIME_MIN_NS`.

    Raises:
        QueryError: for a bad value, ``window`` with ``start``/``end``, or ``start`` after ``end``.
    """
    if window_raw is not None and (start_raw is not None or end_raw is not None):
        raise QueryError("window", "give either window or start/end, not both")
    start = parse_time("start", start_raw)
    end = parse_time("end", end_raw)
    window = parse_window(window_raw)
    if window is not None:
        start, end = now - window, now
    end = now if end is None else end
    start = end - default_span if start is None else start
    start = max(start, min(TIME_MIN_NS, end))
    if start > end:
        raise QueryError("start", f"start must not be after end (start {start // NS_PER_MS} > "
                                  f"end {end // NS_PER_MS}, epoch milliseconds)")
    return start, end


# --- choices and series --------------------------------------------------------------------------


def parse_choice(name: str, raw: str | None, choices: Iterable[str], default: str) -> str:
    """Parse a parameter that must be exactly (case-sensitively) one of ``choices``.

    ``None`` (absent) gives ``default``; ``''`` (given empty) is an error unless ``''`` is a choice.
    """
    if raw is None:
        return default
    allowed = list(choices)
    if raw not in allowed:
        raise _bad(name, f"one of {', '.join(allowed)}", raw)
    return raw


def _parse_enum(name: str, raw: str | None, kind: type[_E]) -> _E | None:
    if raw is None:
        return None
    # Fold case only for ASCII: str.lower() maps look-alikes such as 'K' (KELVIN SIGN) to ASCII.
    key = raw.lower() if raw.isascii() else raw
    for member in kind:
        if member.value == key:
            return member
    raise _bad(name, f"one of {', '.join(m.value for m in kind)}", raw)


def parse_exchange(raw: str | None) -> Venue | None:
    """Parse ``exchange``: ``binance`` or ``bybit``, ASCII case-insensitive; ``None`` when absent.

    Raises:
        QueryError: for ``''`` or anything else.
    """
    return _parse_enum("exchange", raw, Venue)


def parse_market(raw: str | None) -> Market | None:
    """Parse ``market``: ``spot``, ``usdm`` or ``linear``, ASCII case-insensitive; ``None`` when absent.

    Raises:
        QueryError: for ``''`` or anything else.
    """
    return _parse_enum("market", raw, Market)


def parse_symbol(raw: str) -> str:
    """Parse a symbol (the ``{symbol}`` path part or the ``symbol`` parameter) and upper-case it.

    A symbol is 2 to 20 ASCII letters or digits. The check comes before upper-casing, because
    ``'ſ'.upper() == 'S'`` and ``'ﬀ'.upper() == 'FF'``.

    Raises:
        QueryError: naming ``symbol`` for anything else.
    """
    if not _SYMBOL_RE.fullmatch(raw):
        raise _bad("symbol", "2 to 20 ASCII letters or digits, as the venue writes it (e.g. BTCUSDT)", raw)
    return raw.upper()


def resolve_series(
    targets: Iterable[StreamTarget], symbol: str, exchange: str | None, market: str | None
) -> tuple[Venue, Market]:
    """Find the one collected (venue, market) a data query means, or explain why it cannot.

    ``exchange`` and ``market`` are checked first (with :func:`parse_exchange` and
    :func:`parse_market`), then ``symbol`` (with :func:`parse_symbol`).

    Raises:
        QueryError: 400 for a bad ``exchange``/``market``/``symbol`` or an ambiguous symbol, 404 for
            a symbol that is not collected.
    """
    venue = parse_exchange(exchange)
    mkt = parse_market(market)
    sym = parse_symbol(symbol)
    matches = [
        (t.venue, t.market)
        for t in targets
        if sym in t.symbols and (venue is None or t.venue is venue) and (mkt is None or t.market is mkt)
    ]
    if not matches:
        given = [str(x) for x in (venue, mkt) if x is not None]
        where = " on " + "/".join(given) if given else ""
        raise QueryError(None, f"symbol {sym} is not collected{where}; see /api/v1/symbols",
                         status=404, code="not_found")
    if len(matches) > 1:
        options = ", ".join(f"exchange={v}&market={m}" for v, m in matches)
        raise QueryError("exchange", f"{sym} is collected on several markets; add one of: {options}")
    return matches[0]


# --- cursors -------------------------------------------------------------------------------------


def encode_cursor(scope: tuple[str, ...], position: Sequence[int | str]) -> str:
    """Make the opaque cursor for ``position`` within the query ``scope``.

    The cursor is URL-safe base64 (no padding) of the compact JSON ``[scope, position]``.

    Args:
        scope: what the cursor belongs to, e.g. ``("trades", "binance", "spot", "BTCUSDT")``.
        position: the key of the last row served, e.g. ``[ts_event_ns, trade_id]``.

    Raises:
        ValueError: (a bug, not a bad query) for a bool, an int outside int64, or a cursor longer
            than :data:`MAX_CURSOR_CHARS`: :func:`decode_cursor` would refuse it.
    """
    if not all(isinstance(part, str) for part in scope):
        raise ValueError(f"cursor scope must be strings, got {scope!r}")
    for x in position:
        if isinstance(x, bool) or not isinstance(x, int | str):
            raise ValueError(f"cursor positions are ints and strs, got {x!r}")
        if isinstance(x, int) and not _INT64_MIN <= x <= _INT64_MAX:
            raise ValueError(f"cursor position {x} is outside int64")
    cursor = base64.urlsafe_b64encode(orjson.dumps([list(scope), list(position)])).decode("ascii").rstrip("=")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError(f"cursor of {len(cursor)} characters exceeds {MAX_CURSOR_CHARS}")
    return cursor


def decode_cursor(
    raw: str, scope: tuple[str, ...], shape: tuple[type, ...], *, time_index: int | None = 0
) -> list[int | str]:
    """Read a cursor made by :func:`encode_cursor` for this very query.

    Args:
        raw: the ``cursor`` parameter as given.
        scope: the scope of the current query; the cursor must carry exactly this one.
        shape: the type of each position element, ``int`` or ``str``: ``(int, int)`` for Binance
            trades, ``(int, str)`` for Bybit trades, ``(int,)`` for book history.
        time_index: the element that is an epoch-ns time, which must lie within
            [:data:`TIME_MIN_NS`, :data:`TIME_MAX_NS`]; ``None`` when there is none.

    Returns:
        The position, matching ``shape`` (ints within int64, never bool).

    Raises:
        QueryError: (400, parameter ``cursor``) for a cursor this API did not issue for this query.
    """
    if not raw or len(raw) > MAX_CURSOR_CHARS or not _B64URL_RE.fullmatch(raw):
        size = f" (it has {len(raw)} characters, at most {MAX_CURSOR_CHARS} are issued)" \
            if len(raw) > MAX_CURSOR_CHARS else ""
        raise QueryError("cursor", f"cursor is not one this API issued{size}; {_CURSOR_ADVICE}")
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise QueryError("cursor", f"cursor is not one this API issued (it does not decode); "
                                   f"{_CURSOR_ADVICE}") from None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
            and isinstance(value[1], list) and all(isinstance(p, str) for p in value[0])):
        raise QueryError("cursor", f"cursor is not one this API issued; {_CURSOR_ADVICE}")
    issued: list[str] = value[0]
    position: list[int | str] = value[1]
    if tuple(issued) != tuple(scope):
        raise QueryError("cursor", f"cursor belongs to another query: it was issued for {_describe(issued)}; "
                                   "pass it only with the same symbol, exchange and market"
                                   f" (this query is for {_describe(list(scope))})")
    if len(position) != len(shape) or not all(map(_fits, position, shape)):
        raise QueryError("cursor", f"cursor does not hold a position of this query; {_CURSOR_ADVICE}")
    ts = position[time_index] if time_index is not None else TIME_MIN_NS
    if not (isinstance(ts, int) and TIME_MIN_NS <= ts <= TIME_MAX_NS):
        raise QueryError("cursor", f"cursor holds a time outside 2000-01-01..2100-01-01; {_CURSOR_ADVICE}")
    if encode_cursor(scope, position) != raw:
        raise QueryError("cursor", f"cursor is not one this API issued (not in its canonical form); "
                                   f"{_CURSOR_ADVICE}")
    return position


def _fits(x: object, kind: type) -> bool:
    if kind is int:
        return type(x) is int and _INT64_MIN <= x <= _INT64_MAX
    if kind is str:
        return isinstance(x, str)
    raise TypeError(f"cursor shapes hold int and str, not {kind!r}")


def _describe(scope: list[str]) -> str:
    """``trades of binance/spot/BTCUSDT`` for a scope, without echoing anything odd."""
    if not scope or not all(_SCOPE_PART_RE.fullmatch(p) for p in scope) or len(scope) > 8:
        return "another query"
    return scope[0] + (" of " + "/".join(scope[1:]) if len(scope) > 1 else "")
