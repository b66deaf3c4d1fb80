"""Plain HTTP GET control endpoints, served on the emulator's WebSocket port.

picows hands every request to the server's listener factory before the
WebSocket upgrade; answering with a non-101 response sends that response and
closes the connection. That is all a tiny control API needs.

Every fault endpoint accepts the optional filters ``market``, ``stream`` and
``venue`` (book and REST faults also ``symbol``). Responses are small JSON
objects; errors are ``{"error": ...}`` with status 400 or 404.

============================  =====================================================
``/control/health``           ``{"ok": true}``
``/control/stats``            connections, per-stream counters, feeds, replays
``/control/delivered``        ``stream=`` [``market=``] [``venue=``] -> ``{"stream","market","ids"}``
``/control/book``             ``venue=`` ``market=`` ``symbol=`` [``depth=``] -> the true book
                              ``{"bids","asks","update_id"}``
``/control/drop``             [``graceful=1``] -> ``{"affected": n}``
``/control/silence``          ``seconds=S``
``/control/silence_stream``   ``seconds=S`` ``stream=`` (the connections' other streams flow)
``/control/malformed``        ``count=N`` ``kind=`` one of ``invalid_json``,
                              ``unknown_event``, ``zero_price``, ``missing_field``
``/control/shutdown``         [``grace=S``] ``serverShutdown``, close after S seconds
``/control/gap``              [``count=N``] drop N depth/order-book updates
``/control/crossed``          the next book update crosses the book
``/control/restart_book``     Bybit ``u=1`` snapshot
``/control/slow_snapshots``   ``seconds=S`` [``count=N``] delay REST book snapshots
``/control/stale_snapshots``  ``updates=U`` [``count=N``] serve books U changes old
``/control/fail_snapshots``   [``count=N``] [``status=503``]
``/control/rest_status``      ``status=429|418|...`` [``count=N``] [``retry_after=S``]
``/control/fail_subscribe``   ``topic=`` [``market=``] [``times=N``] (0 clears)
``/control/clear_faults``     forget pending book, REST and subscription faults
``/control/rate``             ``rate=R`` [``symbol=``] (adds a feed for a new symbol)
``/control/pause``            [``symbol=``]
``/control/resume``           [``symbol=``]
============================  =====================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from wadm.emulator.query import QueryParams

if TYPE_CHECKING:
    from wadm.emulator.server import Emulator

__all__ = ["ControlApi", "json_response"]

_JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}


class BadRequest(Exception):
    """A control request with missing or invalid parameters."""


def json_response(status: int, body: Any) -> WSUpgradeResponseWithListener:
    """Build a JSON HTTP response that picows sends instead of an upgrade.

    Args:
        status: HTTP status code.
        body: JSON-serialisable body.
    """
    payload = orjson.dumps(body)
    if status < 400:
        response = WSUpgradeResponse.create_ok_response(payload, _JSON_HEADERS)
    else:
        response = WSUpgradeResponse.create_error_response(status, payload, _JSON_HEADERS)
    return WSUpgradeResponseWithListener(response, None)


class _Query(QueryParams):
    def missing(self, name: str) -> Exception:
        return BadRequest(f"missing parameter {name!r}")

    def number(self, name: str, default: float | None = None) -> float:
        text = self.text(name)
        if text is None:
            if default is None:
                raise self.missing(name)
            return default
        try:
            value = float(text)
        except ValueError:
            raise BadRequest(f"parameter {name!r} must be a number") from None
        if math.isnan(value) or value < 0:
            raise BadRequest(f"parameter {name!r} must be >= 0")
        return value

    def integer(self, name: str, default: int) -> int:
        text = self.text(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise BadRequest(f"parameter {name!r} must be an integer") from None
        if value < 0:
            raise BadRequest(f"parameter {name!r} must be >= 0")
        return value

    def flag(self, name: str) -> bool:
        return (self.text(name) or "").lower() in ("1", "true", "yes", "on")

    def filters(self) -> dict[str, str | None]:
        return {
            "market": self.text("market"),
            "stream": self.text("stream"),
            "venue": self.text("venue"),
        }


class ControlApi:
    """Dispatches ``/control/<name>`` requests to `Emulator` methods."""

    def __init__(self, emulator: Emulator) -> None:
        """Bind the API to an emulator."""
        self.emu = emulator
        self._routes: dict[str, Callable[[_Query], Any]] = {
            "health": lambda q: {"ok": True, "port": self.emu.port},
            "stats": lambda q: self.emu.stats(),
            "delivered": self._delivered,
            "drop": lambda q: {"affected": self.emu.drop(graceful=q.flag("graceful"), **q.filters())},
            "silence": lambda q: {"affected": self.emu.silence(q.number("seconds"), **q.filters())},
            "malformed": self._malformed,
            "shutdown": self._shutdown,
            "rate": self._rate,
            "pause": lambda q: {"affected": self.emu.pause(**self._feed_filters(q))},
            "resume": lambda q: {"affected": self.emu.resume(**self._feed_filters(q))},
            "book": self._book,
            "silence_stream": lambda q: {
                "affected": self.emu.silence_stream(
                    q.number("seconds"), stream=q.required("stream"), market=q.text("market"), venue=q.text("venue")
                )
            },
            "gap": lambda q: {"affected": self.emu.depth_gap(q.integer("count", 1), **self._book_filters(q))},
            "crossed": lambda q: {"affected": self.emu.crossed_update(**self._book_filters(q))},
            "restart_book": lambda q: {
                "affected": self.emu.restart_book(
                    market=q.text("market"), symbol=q.text("symbol"), stream=q.text("stream")
                )
            },
            "slow_snapshots": lambda q: {
                "affected": self.emu.slow_snapshots(q.number("seconds"), q.integer("count", 1), **self._rest_filters(q))
            },
            "stale_snapshots": lambda q: {
                "affected": self.emu.stale_snapshots(
                    int(q.number("updates")), q.integer("count", 1), **self._rest_filters(q)
                )
            },
            "fail_snapshots": lambda q: {
                "affected": self.emu.fail_snapshots(
                    q.integer("count", 1), q.integer("status", 503), **self._rest_filters(q)
                )
            },
            "rest_status": lambda q: {
                "affected": self.emu.force_rest_status(
                    int(q.number("status")),
                    q.integer("count", 1),
                    retry_after=q.number("retry_after", 1.0),
                    **self._rest_filters(q),
                )
            },
            "fail_subscribe": self._fail_subscribe,
            "clear_faults": self._clear_faults,
        }

    def respond(self, path: str) -> WSUpgradeResponseWithListener:
        """Handle one control request.

        Args:
            path: Request path with query string.
        """
        split = urlsplit(path)
        name = split.path[len("/control") :].strip("/")
        handler = self._routes.get(name)
        if handler is None:
            return json_response(
                404,
                {
                    "error": f"unknown control endpoint {split.path!r}",
                    "known": list(self._routes),
                },
            )
        try:
            return json_response(200, handler(_Query(split.query)))
        except (BadRequest, ValueError) as exc:
            return json_response(400, {"error": str(exc)})

    def _delivered(self, q: _Query) -> dict[str, Any]:
        stream = q.required("stream")
        venue = q.text("venue") or "binance"
        market = self.emu.resolve_market(stream, q.text("market"), venue)
        return {
            "stream": stream,
            "market": market,
            "ids": self.emu.delivered(stream, market, venue),
        }

    def _malformed(self, q: _Query) -> dict[str, Any]:
        kind = q.required("kind")
        count = q.integer("count", 1)
        return {
            "affected": self.emu.send_malformed(kind, count, **q.filters()),
            "count": count,
        }

    def _shutdown(self, q: _Query) -> dict[str, Any]:
        grace = q.number("grace", self.emu.shutdown_grace)
        return {"affected": self.emu.shutdown(grace, **q.filters()), "grace": grace}

    def _rate(self, q: _Query) -> dict[str, Any]:
        rate = q.number("rate")
        if math.isinf(rate):
            raise BadRequest("parameter 'rate' must be finite")
        return {
            "affected": self.emu.set_rate(rate, **self._feed_filters(q)),
            "rate": rate,
        }

    def _book(self, q: _Query) -> dict[str, Any]:
        venue, market, symbol = q.required("venue"), q.required("market"), q.required("symbol")
        depth = q.integer("depth", 0)
        bids, asks, update_id = self.emu.true_book(venue, market, symbol, depth or None)
        return {
            "venue": venue,
            "market": market,
            "symbol": symbol.upper(),
            "bids": bids,
            "asks": asks,
            "update_id": update_id,
        }

    def _fail_subscribe(self, q: _Query) -> dict[str, Any]:
        times = q.text("times")
        count = None if times is None else q.integer("times", 0)
        return {"affected": self.emu.fail_subscribe(q.required("topic"), market=q.text("market"), times=count)}

    def _clear_faults(self, q: _Query) -> dict[str, Any]:
        self.emu.clear_faults()
        return {"ok": True}

    @staticmethod
    def _book_filters(q: _Query) -> dict[str, str | None]:
        return {**q.filters(), "symbol": q.text("symbol")}

    @staticmethod
    def _rest_filters(q: _Query) -> dict[str, str | None]:
        return {"venue": q.text("venue"), "market": q.text("market"), "symbol": q.text("symbol")}

    @staticmethod
    def _feed_filters(q: _Query) -> dict[str, str | None]:
        return {
            "market": q.text("market"),
            "symbol": q.text("symbol"),
            "venue": q.text("venue"),
        }
