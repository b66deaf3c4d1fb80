"""Alerts: a JSON POST to ``WADM_ALERT_WEBHOOK_URL`` when something stays wrong, and on recovery.

Every ``check_every`` seconds the alerter reads the service's health (what ``/health`` shows) and
the gaps the writer recorded since the last check:

* ``stream_down``: a stream not live (disconnected, stale, resyncing...) for ``WADM_ALERT_AFTER``
  seconds; resolved when it is live again.
* ``store_down``: store writes failing (or the store not open) for ``WADM_ALERT_AFTER``.
* ``spool``: batches waiting in the on-disk spool for ``WADM_ALERT_AFTER`` (the store is down or
  behind); resolved when the spool is written empty. ``spool_full`` fires at once when the spool
  dropped data.
* ``gap``: windows of missing data recorded in the gaps table, one alert per stream and check
  (a stream alerted about in the last ``WADM_ALERT_AFTER`` seconds waits, its gaps summed).

A firing condition is sent once, again every ``WADM_ALERT_REPEAT`` seconds while it lasts (0:
never) and once more when it resolves. Everything due at one check goes in one POST, so a storm
(a venue banning the IP drops every stream) is one message, and at most one POST is made per
check. ``WADM_ALERT_FORMAT`` shapes the body for the receiver: ``json`` (the default, below),
``slack`` (``{"text"}``), ``discord`` (``{"content"}``) or ``telegram`` (``{"chat_id", "text"}``,
for the Bot API's ``sendMessage`` URL). Failed deliveries are retried a few times, counted and
logged (without the URL, which may hold a token); they never stop the service.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from wadm.config import Settings
from wadm.live import HealthReport
from wadm.records import BatchKey
from wadm.venues.base import Gap

if TYPE_CHECKING:
    from wadm.pipeline.live import ServiceView

__all__ = ["Alert", "Alerter", "render"]

log = logging.getLogger(__name__)

ATTEMPTS = 3  # deliveries of one POST before it is given up (and counted)
TEXT_LIMITS = {"discord": 2000, "telegram": 4096, "slack": 35_000}


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition changing state (or reminded of)."""

    name: str  # stream_down, store_down, spool, spool_full, gap
    state: str  # firing, resolved
    severity: str  # critical, warning
    subject: str
    summary: str
    since: float  # wall clock seconds when the condition began
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "severity": self.severity, "subject": self.subject,
                "summary": self.summary, "since": _iso(self.since), "details": self.details}

    def line(self) -> str:
        mark = "RESOLVED" if self.state == "resolved" else self.severity.upper()
        return f"[{mark}] {self.summary}"


@dataclass
class _Condition:
    since: float  # monotonic
    wall: float
    summary: str
    details: dict[str, Any]
    sent: float | None = None  # monotonic, last firing alert sent


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render(alerts: Sequence[Alert], fmt: str, host: str, chat_id: str = "") -> dict[str, Any]:
    """The POST body for ``alerts`` in a receiver's format."""
    firing = sum(a.state == "firing" for a in alerts)
    head = f"WADM on {host}: {firing} firing, {len(alerts) - firing} resolved"
    text = "\n".join([head, *(a.line() for a in alerts)])
    if fmt in TEXT_LIMITS and len(text) > TEXT_LIMITS[fmt]:
        text = text[:TEXT_LIMITS[fmt] - 20] + "\n… (more in /health)"
    if fmt == "slack":
        return {"text": text}
    if fmt == "discord":
        return {"content": text}
    if fmt == "telegram":
        return {"chat_id": chat_id, "text": text}
    return {"source": "wadm", "host": host, "time": _iso(time.time()), "text": text,
            "alerts": [a.as_json() for a in alerts]}


class Alerter:
    """Watches a service's health and posts alerts. See the module docstring.

    Args:
        settings: the webhook URL, format, delay and repeat.
        view: the service's live view (health).
        transport: httpx transport (tests may pass one; default: the network).
        clock: monotonic seconds.
    """

    def __init__(self, settings: Settings, view: ServiceView, *, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Any = time.monotonic) -> None:
        self.settings = settings
        self.view = view
        self.clock = clock
        self.after = settings.alert_after
        self.check_every = max(0.2, min(5.0, settings.alert_after / 4))
        self.host = socket.gethostname()
        self._transport = transport
        self._active: dict[tuple[str, str], _Condition] = {}  # (name, subject) -> condition seen bad
        self._gaps: dict[str, list[int]] = {}  # stream -> [windows, missing rows] not alerted yet
        self._gap_sent: dict[str, float] = {}
        self._spool_dropped = 0
        self.sent: Counter[tuple[str, str]] = Counter()  # (name, state) -> alerts delivered
        self.failed = 0  # POSTs given up

    def note_gaps(self, key: BatchKey, stream: str, gaps: Sequence[Gap]) -> None:
        """The writer recorded gaps (a gap listener)."""
        pending = self._gaps.setdefault(stream, [0, 0])
        pending[0] += len(gaps)
        pending[1] += sum(g.missing or 0 for g in gaps)

    async def run(self) -> None:
        """Check and send until cancelled."""
        while True:
            await asyncio.sleep(self.check_every)
            due = self.check(self.view.health(), self.clock())
            if due:
                await self.send(due)

    # -- conditions ----------------------------------------------------------------------------

    def check(self, report: HealthReport, now: float) -> list[Alert]:
        """What is due now: conditions past the delay, reminders, recoveries and new gaps."""
        bad: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        if report.collectors_started:
            for s in report.streams:
                if s.state != "live":
                    subject = f"{s.series.venue} {s.series.market} {s.series.symbol} {s.stream}"
                    why = f": {s.error}" if s.error else ""
                    bad[("stream_down", subject)] = (f"{subject} is {s.state}{why}", {
                        "exchange": str(s.series.venue), "market": str(s.series.market),
                        "symbol": s.series.symbol, "stream": s.stream, "state": s.state,
                        "last_message_age_s": s.last_message_age_s})
        store = report.store
        if not store.ok:
            bad[("store_down", store.name)] = (
                f"the {store.name} store is not accepting writes: {store.last_error or 'not open yet'}",
                {"store": store.name, "error": store.last_error, "store_errors": store.store_errors})
        spool = store.spool
        if spool is not None and spool.batches:
            bad[("spool", store.name)] = (
                f"{spool.batches} batches ({spool.bytes / 1e6:.1f} MB of {spool.max_bytes / 1e6:.0f} MB) wait in "
                f"the spool for the {store.name} store, the oldest {spool.oldest_age_s or 0:.0f} s old",
                {"bytes": spool.bytes, "max_bytes": spool.max_bytes, "batches": spool.batches,
                 "oldest_age_s": spool.oldest_age_s})
        due: list[Alert] = []
        wall = time.time()
        for key, (summary, details) in bad.items():
            cond = self._active.get(key)
            if cond is None:
                cond = self._active[key] = _Condition(now, wall, summary, details)
            cond.summary, cond.details = summary, details
            repeat = self.settings.alert_repeat
            if now - cond.since >= self.after and (
                    cond.sent is None or (repeat > 0 and now - cond.sent >= repeat)):
                cond.sent = now
                due.append(self._alert(key, "firing", cond))
        for key in [k for k in self._active if k not in bad]:
            cond = self._active.pop(key)
            if cond.sent is not None:
                due.append(self._alert(key, "resolved", cond, f"{key[1]}: {key[0].replace('_', ' ')} is over"))
        if spool is not None and spool.dropped_batches > self._spool_dropped:
            lost = spool.dropped_batches - self._spool_dropped
            self._spool_dropped = spool.dropped_batches
            due.append(Alert("spool_full", "firing", "critical", store.name,
                             f"the spool passed its bound of {spool.max_bytes / 1e6:.0f} MB and dropped {lost} "
                             f"batches ({spool.dropped_rows} rows in all); they are recorded as gaps", wall,
                             {"dropped_batches": spool.dropped_batches, "dropped_rows": spool.dropped_rows}))
        due += self._gap_alerts(now, wall)
        return due

    def _alert(self, key: tuple[str, str], state: str, cond: _Condition, summary: str | None = None) -> Alert:
        name, subject = key
        severity = "warning" if name == "spool" else "critical"
        return Alert(name, state, severity, subject, summary or cond.summary, cond.wall, dict(cond.details))

    def _gap_alerts(self, now: float, wall: float) -> list[Alert]:
        due = []
        for stream, (windows, missing) in list(self._gaps.items()):
            last = self._gap_sent.get(stream)
            if last is not None and now - last < self.after:
                continue  # alerted a moment ago: these wait and are summed
            del self._gaps[stream]
            self._gap_sent[stream] = now
            rows = f", {missing} rows missing" if missing else ""
            due.append(Alert("gap", "firing", "warning", stream,
                             f"{stream}: {windows} window(s) of missing data recorded{rows} (see /api/v1/gaps)",
                             wall, {"stream": stream, "windows": windows, "missing": missing}))
        return due

    # -- delivery ------------------------------------------------------------------------------

    async def send(self, alerts: list[Alert]) -> bool:
        """POST ``alerts`` in one body, retrying a few times; True when the receiver took it."""
        body = render(alerts, self.settings.alert_format, self.host, self.settings.alert_telegram_chat_id)
        where = urlsplit(self.settings.alert_webhook_url).hostname or "the webhook"
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(2.0 ** attempt)
            try:
                async with httpx.AsyncClient(transport=self._transport, timeout=10.0) as client:
                    response = await client.post(self.settings.alert_webhook_url, json=body)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if response.status_code < 300:
                for a in alerts:
                    self.sent[(a.name, a.state)] += 1
                log.info("Sent %d alert(s) to %s: %s", len(alerts), where, "; ".join(a.line() for a in alerts))
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # the receiver refuses this body: retrying will not help
        self.failed += 1
        log.error("Could not deliver %d alert(s) to %s (%s): %s", len(alerts), where, problem,
                  "; ".join(a.line() for a in alerts))
        return False
