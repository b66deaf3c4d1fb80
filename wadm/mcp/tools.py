"""What each MCP tool asks WADM and how its answer is cut down for a model.

Each function takes the client and the tool's validated arguments and returns the typed result
and its compact text. The numbers come from WADM as they are: this module picks, rounds and
renders; the analytics live in the service, and their tools in :mod:`wadm.mcp.analysis`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from wadm.mcp import models as m
from wadm.mcp.client import Listing, WadmClient
from wadm.mcp.fmt import Precision, iso, pct, rnd, signed, span

__all__ = ["book", "data_gaps", "markets", "ohlcv", "price", "recent_trades", "status"]

Rows = list[dict[str, Any]]
TRADE_PAGE = 10_000
TRADE_PAGES = 20  # at most this many pages are read for one summary


def names(rows: list[Listing]) -> list[str]:
    return [r.name for r in rows]


def scope_of(body: dict[str, Any], markets: list[Listing]) -> dict[str, Any]:
    return {"symbol": markets[0].symbol, "markets": names(markets), "time": iso(body.get("end") or body.get("ts")),
            "data_complete": bool(body.get("data_complete", True)), "gaps": len(body.get("gaps") or [])}



def gap_note(scope: dict[str, Any]) -> str:
    return "" if scope["data_complete"] else f" [INCOMPLETE: {scope['gaps']} gap(s) in the window; see get_data_gaps]"


async def _one(client: WadmClient, symbol: str, exchange: str | None, market: str | None) -> tuple[Listing, str]:
    """The single market a data tool reads, and a note naming the others when there was a choice."""
    found = await client.markets_of(symbol, exchange, market)
    chosen = found[0]
    others = [r.name for r in found[1:]]
    return chosen, f" (also collected on {', '.join(others)}: pass exchange and market)" if others else ""


# -- what is collected, and how it is going -------------------------------------------------------


async def markets(client: WadmClient) -> tuple[m.Markets, str]:
    rows = await client.listing()
    listed = [{"symbol": r.symbol, "exchange": r.exchange, "market": r.market, "channels": list(r.channels),
               "collecting": r.collecting, "since": iso(r.since), "tick": r.tick, "lot": r.lot} for r in rows]
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r.symbol, []).append(f"{r.name} (tick {r.tick:g}, lot {r.lot:g})" if r.tick and r.lot
                                           else r.name)
    since = min((r.since for r in rows if r.since), default=None)
    lines = [f"{s}: {'; '.join(v)}" for s, v in sorted(by.items())]
    text = f"{len(rows)} markets collected" + (f", since {iso(since)}" if since else "") + ":\n" + "\n".join(lines)
    return m.Markets(markets=listed), text


MAX_PROBLEMS = 12  # streams listed as not live (all are counted): 24 streams down must stay within the token budget


async def status(client: WadmClient, hours: int) -> tuple[m.Status, str]:
    # /health answers 503 when something is wrong: that answer is what this tool is for.
    health, (gaps, gaps_error) = await asyncio.gather(client.get("/health", ok=(200, 503)), _gaps(client, hours))
    streams: Rows = health.get("streams") or []
    if not streams and "store" not in health:
        raise ToolError("WADM's /health answered only its status: WADM_API_KEY is missing or not accepted, so the "
                        "detail is hidden. Set WADM_API_KEY.")
    problems = [{"market": f"{s['exchange']} {s['market']}", "symbol": s["symbol"], "channel": s["channel"],
                 "state": s.get("book_state") if s.get("state") == "live" and s.get("book_state") not in (None, "live")
                 else s.get("state"), "error": _short_error(s.get("error")),
                 "last_message_age_s": s.get("last_message_age_s")}
                for s in streams if s.get("state") != "live" or s.get("book_state") not in (None, "live")]
    store = health.get("store") or {}
    rows: Rows = gaps.get("gaps") or []
    recent = [_gap_row(g) for g in sorted(rows, key=lambda g: g["start"], reverse=True)[:8]]
    live = len(streams) - len(problems)
    uptime = span(health.get("uptime_s", 0))
    parts = [f"WADM is {health.get('status')}: {live}/{len(streams)} streams live, up {uptime}."]
    if problems:
        by_cause: dict[tuple[str, str | None], list[str]] = {}
        for p in problems:
            by_cause.setdefault((str(p["state"]), p["error"]), []).append(f"{p['symbol']} {p['market']} {p['channel']}")
        named = 0
        causes = list(by_cause.items())
        for index, ((state, error), names) in enumerate(causes):
            if named >= 10:  # the rest in one line: the text stays short however many causes
                rest = sum(len(n) for _, n in causes[index:])
                parts.append(f"And {rest} more streams not live for other reasons (get_status's problems list "
                             f"the first {MAX_PROBLEMS}).")
                break
            shown = names[:10 - named]
            named += len(shown)
            more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
            parts.append(f"{state.capitalize()}{f' ({error})' if error else ''}: {', '.join(shown)}{more}.")
    parts.append(f"Store {store.get('name')} {'ok' if store.get('ok') else 'FAILING: ' + str(store.get('last_error'))}"
                 f", {store.get('pending_rows', 0)} rows pending.")
    if rows:
        parts.append(f"{len(rows)} gap(s) in the last {hours}h, newest: "
                     + "; ".join(f"{g['symbol']} {g['market']} {g['channel']} {g['start']}→{g['end']} ({g['reason']})"
                                 for g in recent[:3]) + ".")
    else:
        parts.append(f"No gaps in the last {hours}h.")
    if gaps_error is not None:
        parts.append(f"Gaps could not be read: {gaps_error}")
    if health.get("auth") == "none":
        parts.append("The API has no keys (auth: none).")
    summary = " ".join(parts)
    result = m.Status(status=str(health.get("status")), time=iso(health.get("time")),
                      uptime=uptime, auth=health.get("auth"), streams=len(streams), live=live,
                      problems=problems[:MAX_PROBLEMS], not_live=len(problems),
                      store={k: store.get(k) for k in ("name", "ok", "pending_rows", "dropped_rows", "last_error")},
                      gaps_hours=hours, gaps=len(rows), recent_gaps=recent, summary=summary)
    return result, summary


async def _gaps(client: WadmClient, hours: int) -> tuple[dict[str, Any], str | None]:
    """The gaps of the last ``hours``, or why they could not be read (the status says it)."""
    try:
        return await client.get("/api/v1/gaps", {"window": f"{hours}h", "limit": 1000}), None
    except ToolError as exc:
        return {}, str(exc)


def _short_error(error: object) -> str | None:
    """A stream's last error, cut to what a model needs to see."""
    if not error:
        return None
    text = str(error)
    return text if len(text) <= 100 else text[:99] + "…"


def _gap_row(g: dict[str, Any]) -> dict[str, Any]:
    return {"symbol": g["symbol"], "market": f"{g['exchange']} {g['market']}", "channel": g["channel"],
            "start": iso(g["start"]), "end": iso(g["end"]), "duration": span((g["end"] - g["start"]) / 1000),
            "reason": g.get("reason"), "missing": g.get("missing")}


# -- prices, bars, the book, trades ----------------------------------------------------------------


async def price(client: WadmClient, symbol: str, exchange: str | None, market: str | None) -> tuple[m.Price, str]:
    found = await client.markets_of(symbol, exchange, market)

    async def one(r: Listing) -> dict[str, Any]:
        where = {"exchange": r.exchange, "market": r.market}
        p = Precision.of([r])
        flow, minutes, hours = await asyncio.gather(
            client.get(f"/api/v1/order-flow/current/{symbol}", where),
            client.get(f"/api/v1/klines/{symbol}", where | {"limit": 61}),
            client.get(f"/api/v1/klines/{symbol}", where | {"interval": "1h", "limit": 25}))
        mk, hk = minutes.get("klines") or [], hours.get("klines") or []
        last = flow.get("price")
        top: dict[str, Any] = next(iter(flow.get("book") or []), {})
        windows = flow.get("windows") or {}
        now_ms = flow.get("ts") or time.time() * 1000
        # The change needs a bar from (about) 1h and 24h ago: younger data answers no change at all.
        ago_1h = next((k["open"] for k in mk if now_ms - 3_660_000 <= k["ts"] <= now_ms - 3_540_000), None)
        ago_24h = next((k["open"] for k in hk if now_ms - 90_000_000 <= k["ts"] <= now_ms - 82_800_000), None)
        return {"market": r.name, "last": p.px(last), "mid": top.get("mid"), "spread": p.px(top.get("spread")),
                "change_1h_pct": pct(last, ago_1h), "change_24h_pct": pct(last, ago_24h),
                "volume_1h": p.qty(windows.get("1h", {}).get("volume")),
                "volume_24h": p.qty(windows.get("24h", {}).get("volume")),
                "book": top.get("state"), "data_since": iso(hk[0]["ts"]) if hk else None}

    rows = list(await asyncio.gather(*(one(r) for r in found)))
    lines = [f"{symbol} at {iso(time.time() * 1000)}"]
    for row in rows:
        line = f"{row['market']}: last {row['last']}"
        if row["mid"] is not None:
            line += f" mid {row['mid']} spread {row['spread']}"
        line += (f" | 1h {signed(row['change_1h_pct'])}% vol {row['volume_1h']}"
                 f" | 24h {signed(row['change_24h_pct'])}% vol {row['volume_24h']}")
        lines.append(line)
    return m.Price(symbol=symbol, time=iso(time.time() * 1000), markets=rows), "\n".join(lines)


async def ohlcv(client: WadmClient, symbol: str, exchange: str | None, market: str | None, interval: str,
                limit: int) -> tuple[m.Ohlcv, str]:
    chosen, note = await _one(client, symbol, exchange, market)
    p = Precision.of([chosen])
    body = await client.get(f"/api/v1/klines/{symbol}", {"exchange": chosen.exchange, "market": chosen.market,
                                                        "interval": interval, "limit": limit})
    rows = [[iso(k["ts"]), p.px(k["open"]), p.px(k["high"]), p.px(k["low"]), p.px(k["close"]), p.qty(k["volume"])]
            for k in body.get("klines") or []]
    partial = [iso(k["ts"]) or "" for k in body.get("klines") or [] if not k.get("closed") or not k.get("complete")]
    scope = scope_of(body, [chosen])
    columns = ["time", "open", "high", "low", "close", "volume"]
    text = (f"{symbol} {chosen.name} {interval} OHLCV, {len(rows)} bars{note}{gap_note(scope)}\n"
            + ",".join(columns) + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows))
    if partial:
        text += f"\nnot final: {', '.join(partial)}"
    return m.Ohlcv(**scope, interval=interval, columns=columns, rows=rows, partial=partial), text


async def book(client: WadmClient, symbol: str, exchange: str | None, market: str | None,
               depth: int) -> tuple[m.Book, str]:
    chosen, note = await _one(client, symbol, exchange, market)
    p = Precision.of([chosen])
    body = await client.get(f"/api/v1/orderbook/{symbol}", {"exchange": chosen.exchange, "market": chosen.market,
                                                           "depth": depth})
    bands = body.get("bands") or {}
    names = {"0.1pct": "0.1%", "0.5pct": "0.5%", "1pct": "1%"}
    imbalance = {v: rnd(bands[f"imbalance_{k}"], 3) for k, v in names.items() if f"imbalance_{k}" in bands} or None
    in_band = {v: [p.qty(bands.get(f"bid_depth_{k}")), p.qty(bands.get(f"ask_depth_{k}"))]
               for k, v in names.items() if f"bid_depth_{k}" in bands} or None
    raw_walls = body.get("walls")
    walls = None if not raw_walls else {
        side: [{"price": p.px(w["price"]), "qty": p.qty(w["qty"]), "x_median": w["multiple"]} for w in raw_walls[side]]
        for side in ("bids", "asks")}
    mid, spread = body.get("mid"), body.get("spread")
    bps = round(spread / mid * 10_000, 2) if mid and spread is not None else None
    result = m.Book(symbol=symbol, markets=[chosen.name], time=iso(body.get("ts"), millis=True),
                    state=str(body.get("state")), mid=mid, spread=p.px(spread), spread_bps=bps, imbalance=imbalance,
                    depth_in_band=in_band, walls=walls,
                    bids=[[p.px(a), p.qty(b)] for a, b in body.get("bids") or []],
                    asks=[[p.px(a), p.qty(b)] for a, b in body.get("asks") or []])
    lines = [f"{symbol} {chosen.name} book {result.state}{' (STALE)' if body.get('stale') else ''} "
             f"at {result.time}{note}"]
    if mid is None:
        lines.append("no levels: the book is resyncing; ask again in a few seconds")
    else:
        lines.append(f"mid {mid} spread {result.spread} ({bps} bps)")
        if imbalance and in_band:
            lines.append("imbalance (bid-ask)/(bid+ask) by band: " + ", ".join(
                f"{k} {signed(v)} [{in_band[k][0]} vs {in_band[k][1]}]" for k, v in imbalance.items()))
        if walls:
            for side in ("bids", "asks"):
                if walls[side]:
                    lines.append(f"{side[:-1]} walls (1% band, ≥3× median): " + ", ".join(
                        f"{w['qty']}@{w['price']} ({w['x_median']}×)" for w in walls[side]))
        lines.append("bids: " + " ".join(f"{q}@{x}" for x, q in result.bids))
        lines.append("asks: " + " ".join(f"{q}@{x}" for x, q in result.asks))
    return result, "\n".join(lines)


async def recent_trades(client: WadmClient, symbol: str, exchange: str | None, market: str | None, window: str,
                        rows: int) -> tuple[m.Trades, str]:
    chosen, note = await _one(client, symbol, exchange, market)
    p = Precision.of([chosen])
    params: dict[str, Any] = {"exchange": chosen.exchange, "market": chosen.market, "window": window,
                              "limit": TRADE_PAGE}
    trades: Rows = []
    body: dict[str, Any] = {}
    truncated = False
    for page in range(TRADE_PAGES):
        body = await client.get(f"/api/v1/trades/{symbol}", params)
        trades += body.get("trades") or []
        if not body.get("next"):
            break
        params["cursor"] = body["next"]
        truncated = page == TRADE_PAGES - 1
    buy = sum(t["qty"] for t in trades if t["side"] == "buy")
    sell = sum(t["qty"] for t in trades if t["side"] == "sell")
    volume = buy + sell
    notional = sum(t["qty"] * t["price"] for t in trades)
    largest = sorted(trades, key=lambda t: t["qty"] * t["price"], reverse=True)[:5]
    scope = scope_of(body, [chosen])
    result = m.Trades(
        **scope, window=window, count=len(trades), volume=p.qty(volume), buy=p.qty(buy), sell=p.qty(sell),
        delta=p.qty(buy - sell), vwap=p.px(notional / volume) if volume else None,
        high=max((t["price"] for t in trades), default=None), low=min((t["price"] for t in trades), default=None),
        first=iso(trades[0]["ts"], millis=True) if trades else None,
        last=iso(trades[-1]["ts"], millis=True) if trades else None,
        largest=[_trade(t, p) for t in largest], truncated=truncated,
        rows=[_trade(t, p) for t in trades[-rows:]] if rows else None)
    text = (f"{symbol} {chosen.name} trades, last {window}{note}{gap_note(scope)}: {result.count} trades"
            f"{' (only the first ' + str(len(trades)) + ' read)' if truncated else ''}, volume {result.volume} "
            f"(buy {result.buy} / sell {result.sell}, delta {result.delta}), VWAP {result.vwap}, "
            f"high {result.high} low {result.low}, {result.first} → {result.last}")
    if largest:
        text += "\nlargest: " + "; ".join(f"{t['side']} {t['qty']}@{t['price']} {t['time']}" for t in result.largest)
    if result.rows:
        text += "\ntime,price,qty,side\n" + "\n".join(f"{t['time']},{t['price']},{t['qty']},{t['side']}"
                                                       for t in result.rows)
    return result, text


def _trade(t: dict[str, Any], p: Precision) -> dict[str, Any]:
    return {"time": iso(t["ts"], millis=True), "price": p.px(t["price"]), "qty": p.qty(t["qty"]), "side": t["side"],
            "notional": round(t["price"] * t["qty"])}


# -- gaps -----------------------------------------------------------------------------------------


async def data_gaps(client: WadmClient, symbol: str | None, exchange: str | None, market: str | None,
                    window: str) -> tuple[m.Gaps, str]:
    if symbol is not None:
        await client.markets_of(symbol, exchange, market)
    body = await client.get("/api/v1/gaps", {"symbol": symbol, "exchange": exchange, "market": market,
                                             "window": window, "limit": 1000})
    rows: Rows = sorted(body.get("gaps") or [], key=lambda g: g["start"], reverse=True)
    total = sum(g["end"] - g["start"] for g in rows) / 1000
    listed = [_gap_row(g) for g in rows[:20]]
    who = symbol or "all symbols"
    text = f"{len(rows)} known gap(s) for {who} in the last {window}, {span(total)} in all"
    if listed:
        text += " (newest first):\n" + "\n".join(
            f"{g['symbol']} {g['market']} {g['channel']}: {g['start']} → {g['end']} ({g['duration']}, {g['reason']}"
            + (f", {g['missing']} trades missing" if g["missing"] else "") + ")" for g in listed)
        if len(rows) > len(listed):
            text += f"\n… and {len(rows) - len(listed)} older"
    else:
        text += ": the data is complete."
    return m.Gaps(symbol=symbol, window=window, count=len(rows), missing_total=span(total), gaps=listed), text
