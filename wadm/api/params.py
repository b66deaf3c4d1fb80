"""Query parameter parsing shared by resources: times, windows, limits, series resolution.

Every failure raises :class:`~wadm.errors.QueryError` naming the parameter, what was wrong and
what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from wadm.config import StreamTarget
from wadm.errors import QueryError
from wadm.records import Market, Venue

__all__ = ["parse_choice", "parse_limit", "parse_range", "parse_time", "parse_window", "resolve_series"]

_WINDOW_RE = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 30 * 86400


def parse_time(name: str, raw: str | None) -> int | None:
    """Parse epoch milliseconds or ISO-8601 (UTC when no offset) into epoch nanoseconds."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    if re.fullmatch(r"-?\d+", text):
        ms = int(text)
        if not 0 <= ms <= 10**14:
            raise QueryError(name, f"{name} must be epoch milliseconds or ISO-8601, got {raw!r}")
        return ms * 1_000_000
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(name, f"{name} must be epoch milliseconds or ISO-8601 (e.g. 2026-01-02T03:04:05Z), "
                               f"got {raw!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000) * 1_000_000


def parse_window(raw: str | None) -> int | None:
    """Parse a window such as ``15m``, ``1h``, ``4h``, ``24h``, ``7d`` into nanoseconds."""
    if raw is None or raw == "":
        return None
    m = _WINDOW_RE.match(raw.strip())
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m else 0
    if not m or not 0 < seconds <= MAX_WINDOW_S:
        raise QueryError("window", f"window must be a number and a unit s/m/h/d between 1s and 30d "
                                   f"(e.g. 15m, 1h, 4h, 24h, 7d), got {raw!r}")
    return seconds * 1_000_000_000


def parse_range(
    start_raw: str | None, end_raw: str | None, window_raw: str | None, *, now: int, default_span: int
) -> tuple[int, int]:
    """Resolve ``start``/``end`` or ``window`` into ``(start, end)`` epoch ns.

    ``end`` defaults to ``now`` and ``start`` to ``default_span`` ns before ``end``.
    """
    start = parse_time("start", start_raw)
    end = parse_time("end", end_raw)
    window = parse_window(window_raw)
    if window is not None:
        if start is not None or end is not None:
            raise QueryError("window", "give either window or start/end, not both")
        start, end = now - window, now
    end = now if end is None else end
    start = end - default_span if start is None else start
    if start > end:
        raise QueryError("start", "start must not be after end")
    return start, end


def parse_limit(raw: str | None, *, default: int, maximum: int, name: str = "limit") -> int:
    """Parse ``limit`` (or another count parameter): an integer from 1 to ``maximum``."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise QueryError(name, f"{name} must be an integer from 1 to {maximum}, got {raw!r}")
    return value


def parse_choice(name: str, raw: str | None, choices: Iterable[str], default: str) -> str:
    """Parse a parameter that must be one of ``choices``."""
    if raw is None or raw == "":
        return default
    allowed = list(choices)
    if raw not in allowed:
        raise QueryError(name, f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def resolve_series(
    targets: Iterable[StreamTarget], symbol: str, exchange: str | None, market: str | None
) -> tuple[Venue, Market]:
    """Find the one collected (venue, market) a data query means, or explain why it cannot.

    Raises:
        QueryError: 400 for a bad ``exchange``/``market`` or an ambiguous symbol, 404 for a
            symbol that is not collected.
    """
    venue = None
    if exchange:
        try:
            venue = Venue(exchange.lower())
        except ValueError:
            raise QueryError("exchange", f"exchange must be one of {', '.join(v.value for v in Venue)}, "
                                         f"got {exchange!r}") from None
    mkt = None
    if market:
        try:
            mkt = Market(market.lower())
        except ValueError:
            raise QueryError("market", f"market must be one of {', '.join(m.value for m in Market)}, "
                                       f"got {market!r}") from None
    sym = symbol.upper()
    matches = [
        (t.venue, t.market)
        for t in targets
        if sym in t.symbols and (venue is None or t.venue is venue) and (mkt is None or t.market is mkt)
    ]
    if not matches:
        where = " on " + "/".join(x for x in (exchange, market) if x) if (exchange or market) else ""
        raise QueryError(None, f"symbol {sym} is not collected{where}; see /api/v1/symbols",
                         status=404, code="not_found")
    if len(matches) > 1:
        options = ", ".join(f"exchange={v}&market={m}" for v, m in matches)
        raise QueryError("exchange", f"{sym} is collected on several markets; add one of: {options}")
    return matches[0]
