"""The analytics tools: Volume Profile, Order Flow, footprints, Market Structure, and the one-call
Wyckoff context that puts them together across timeframes.

WADM computes every number; these functions choose the windows, call the endpoints at once, keep
what an analyst reads first and render it in a few lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from wadm.mcp import models as m
from wadm.mcp.client import Listing, WadmClient
from wadm.mcp.fmt import Precision, iso, rnd, signed
from wadm.mcp.tools import gap_note, names, scope_of

__all__ = ["footprint", "market_structure", "order_flow", "volume_profile", "wyckoff_context"]

Rows = list[dict[str, Any]]
DAY_MS = 86_400_000
CONTEXT_TIMEFRAMES = {"4h": "7d", "1h": "7d", "15m": "24h"}  # interval -> window read for it


def _where(exchange: str | None, market: str | None) -> dict[str, Any]:
    return {"exchange": exchange, "market": market}


def _window(window: str) -> dict[str, Any]:
    """``session`` is the UTC day so far; anything else is a REST ``window``."""
    if window == "session":
        now = int(time.time() * 1000)
        return {"start": now - now % DAY_MS}
    return {"window": window}


def _over(markets: list[Listing], body: dict[str, Any]) -> str:
    sources = body.get("sources")
    if sources:
        return " + ".join(f"{s['exchange']} {s['market']}" for s in sources)
    return markets[0].name


# -- volume profile -------------------------------------------------------------------------------


async def volume_profile(client: WadmClient, symbol: str, exchange: str | None, market: str | None, window: str,
                         row_size: float | None, value_area: float, rows: int) -> tuple[m.Profile, str]:
    found = await client.markets_of(symbol, exchange, market)
    p = Precision.of(found)
    body = await client.get(f"/api/v1/volume-profile/{symbol}", _where(exchange, market) | _window(window) | {
        "row_size": row_size, "value_area": value_area, "rows": rows or None})
    scope = scope_of(body, found)
    result = _profile(body, p, scope, window)
    text = (f"{symbol} volume profile, {window} ({_over(found, body)}, from {body.get('resolution')}, rows of "
            f"{result.row_size}){gap_note(scope)}\n" + _profile_line(result))
    if result.rows:
        text += "\nprice,volume,buy,sell\n" + "\n".join(f"{r['price']},{r['volume']},{r['buy']},{r['sell']}"
                                                        for r in result.rows)
    return result, text


def _profile(body: dict[str, Any], p: Precision, scope: dict[str, Any], window: str) -> m.Profile:
    listed = body.get("rows")
    return m.Profile(
        **scope, window=window, resolution=str(body.get("resolution")), row_size=body.get("row_size"),
        poc=body.get("poc"), vah=body.get("vah"), val=body.get("val"), value_area=body.get("value_area", 0.7),
        total_volume=p.qty(body.get("total_volume")), buy_volume=p.qty(body.get("buy_volume")),
        sell_volume=p.qty(body.get("sell_volume")), delta=p.qty(body.get("delta")),
        hvn=(body.get("hvn") or [])[:8], lvn=(body.get("lvn") or [])[:8],
        naked_pocs=[{"session": iso(n["session"])[:10], "poc": n["poc"]}  # type: ignore[index]
                    for n in (body.get("naked_pocs") or [])[-6:]],
        rows=None if not listed else [{"price": r["price"], "volume": p.qty(r["volume"]), "buy": p.qty(r["buy"]),
                                       "sell": p.qty(r["sell"])} for r in listed])


def _profile_line(r: m.Profile) -> str:
    if r.poc is None:
        return "no trades in the window"
    line = (f"POC {r.poc} VAH {r.vah} VAL {r.val} ({r.value_area:.0%} VA) | volume {r.total_volume} "
            f"(buy {r.buy_volume} / sell {r.sell_volume}, delta {r.delta})")
    if r.hvn or r.lvn:
        line += f"\nHVN {r.hvn} LVN {r.lvn}"
    if r.naked_pocs:
        line += "\nnaked POCs: " + ", ".join(f"{n['poc']} ({n['session']})" for n in r.naked_pocs)
    return line


# -- order flow -----------------------------------------------------------------------------------


async def order_flow(client: WadmClient, symbol: str, exchange: str | None, market: str | None,
                     large_notional: float | None) -> tuple[m.Flow, str]:
    found = await client.markets_of(symbol, exchange, market)
    p = Precision.of(found)
    body = await client.get(f"/api/v1/order-flow/current/{symbol}",
                            _where(exchange, market) | {"large_notional": large_notional})
    result = _flow(body, p, scope_of(body, found))
    return result, f"{symbol} order flow now ({_over(found, body)}){gap_note(scope_of(body, found))}\n" + \
        _flow_text(result)


def _flow(body: dict[str, Any], p: Precision, scope: dict[str, Any]) -> m.Flow:
    bar = body.get("bar")
    windows = {k: {"volume": p.qty(w["volume"]), "buy": p.qty(w["buy"]), "sell": p.qty(w["sell"]),
                   "delta": p.qty(w["delta"]), "trades": w["trades"]} for k, w in (body.get("windows") or {}).items()}
    large = [{"time": iso(t["ts"], millis=True), "side": t["side"], "price": p.px(t["price"]), "qty": p.qty(t["qty"]),
              "notional": round(t["notional"]), "market": f"{t.get('exchange', '')} {t.get('market', '')}".strip()}
             for t in (body.get("large_trades") or [])[:6]]
    stacks = [{"time": iso(s["ts"]), "side": s["side"], "from": s["from"], "to": s["to"], "rows": s["rows"]}
              for s in (body.get("imbalances") or [])[:6]]
    books = [{"market": f"{b['exchange']} {b['market']}", "state": b.get("state"), "mid": b.get("mid"),
              "spread": b.get("spread"),
              "imbalance": {k.replace("pct", "%"): rnd(v, 3) for k, v in (b.get("imbalance") or {}).items()}}
             for b in body.get("book") or []]
    return m.Flow(
        **scope, price=p.px(body.get("price")), cvd=p.qty(body.get("cvd")),
        bar=None if bar is None else {
            "start": iso(bar["start"]), "open": p.px(bar["open"]), "high": p.px(bar["high"]), "low": p.px(bar["low"]),
            "close": p.px(bar["close"]), "volume": p.qty(bar["volume"]), "delta": p.qty(bar["delta"]),
            "delta_min": p.qty(bar.get("delta_min")), "delta_max": p.qty(bar.get("delta_max")),
            "trades": bar["trades"]},
        windows=windows, large_notional=body.get("large_notional"), large_trades=large, stacked_imbalances=stacks,
        book=books)


def _flow_text(r: m.Flow) -> str:
    lines = [f"price {r.price} | CVD since 00:00 UTC {r.cvd}"]
    if r.bar:
        b = r.bar
        lines.append(f"open 1m bar {b['start']}: O {b['open']} H {b['high']} L {b['low']} C {b['close']} "
                     f"vol {b['volume']} delta {b['delta']} (min {b['delta_min']} max {b['delta_max']})")
    if r.windows:
        lines.append("delta by window: " + ", ".join(f"{k} {w['delta']} of {w['volume']}"
                                                     for k, w in r.windows.items()))
    if r.large_trades:
        lines.append(f"large trades (≥ {r.large_notional:,.0f}): " + "; ".join(
            f"{t['side']} {t['qty']}@{t['price']} {t['time']} {t['market']}" for t in r.large_trades))
    if r.stacked_imbalances:
        lines.append("stacked imbalances: " + "; ".join(
            f"{s['side']} {s['from']}–{s['to']} ({s['rows']} rows) {_short(s['time'])}" for s in r.stacked_imbalances))
    for b in r.book:
        lines.append(f"book {b['market']} {b['state']}: mid {b['mid']} spread {b['spread']} imbalance "
                     + " ".join(f"{k} {signed(v, 3)}" for k, v in b["imbalance"].items()))
    return "\n".join(lines)


# -- footprint ------------------------------------------------------------------------------------


async def footprint(client: WadmClient, symbol: str, exchange: str | None, market: str | None, interval: str,
                    limit: int, row_size: float | None, imbalance_ratio: float, rows: bool) -> tuple[m.Footprint, str]:
    found = await client.markets_of(symbol, exchange, market)
    p = Precision.of(found)
    body = await client.get(f"/api/v1/order-flow/{symbol}/footprint", _where(exchange, market) | {
        "interval": interval, "limit": limit, "row_size": row_size, "imbalance_ratio": imbalance_ratio})
    scope = scope_of(body, found)
    bars = [_fp_bar(b, p, rows) for b in body.get("bars") or []]
    result = m.Footprint(**scope, interval=interval, row_size=body.get("row_size"),
                         imbalance_ratio=body.get("imbalance_ratio", imbalance_ratio), bars=bars)
    lines = [f"{symbol} footprint {interval} ({_over(found, body)}, rows of {result.row_size}, imbalance ≥ "
             f"{result.imbalance_ratio}×){gap_note(scope)}"]
    for b in bars:
        line = (f"{b['start']} O {b['open']} H {b['high']} L {b['low']} C {b['close']} vol {b['volume']} "
                f"delta {b['delta']} CVD {b['cvd']} POC {b['poc']}")
        if b["buy_imbalances"] or b["sell_imbalances"]:
            line += f" | buy imb {b['buy_imbalances']} sell imb {b['sell_imbalances']}"
        if b["stacked"]:
            line += " | stacked " + ", ".join(f"{s['side']} {s['from']}–{s['to']}" for s in b["stacked"])
        lines.append(line)
        if rows:
            lines.append("  " + " ".join(f"{r['price']}:{r['buy']}x{r['sell']}" for r in b["rows"]))
    return result, "\n".join(lines)


def _fp_bar(b: dict[str, Any], p: Precision, rows: bool) -> dict[str, Any]:
    cells = b.get("rows") or []
    poc = max(cells, key=lambda r: r["buy"] + r["sell"])["price"] if cells else None
    out = {"start": iso(b["start"]), "open": p.px(b["open"]), "high": p.px(b["high"]), "low": p.px(b["low"]),
           "close": p.px(b["close"]), "volume": p.qty(b["volume"]), "delta": p.qty(b["delta"]),
           "cvd": p.qty(b.get("cvd")), "poc": poc, "buy_imbalances": (b.get("buy_imbalances") or [])[:6],
           "sell_imbalances": (b.get("sell_imbalances") or [])[:6],
           "stacked": [{"side": s["side"], "from": s["from"], "to": s["to"]} for s in b.get("stacked") or []]}
    if rows:
        out["rows"] = [{"price": r["price"], "buy": p.qty(r["buy"]), "sell": p.qty(r["sell"])} for r in cells]
    return out


# -- market structure -----------------------------------------------------------------------------


async def market_structure(client: WadmClient, symbol: str, exchange: str | None, market: str | None,
                           interval: str, swing: int, window: str | None) -> tuple[m.Structure, str]:
    found = await client.markets_of(symbol, exchange, market)
    p = Precision.of(found)
    body = await client.get(f"/api/v1/market-structure/{symbol}", _where(exchange, market) | {
        "interval": interval, "swing": swing, "window": window})
    scope = scope_of(body, found)
    result = _structure(body, p, scope, interval)
    head = f"{symbol} market structure {interval} ({_over(found, body)}, from {result.resolution}){gap_note(scope)}"
    return result, head + "\n" + _structure_text(result)


def _structure(body: dict[str, Any], p: Precision, scope: dict[str, Any], interval: str) -> m.Structure:
    held = body.get("range")
    close = body.get("close")
    return m.Structure(
        **scope, interval=interval, resolution=str(body.get("resolution")), close=p.px(close),
        trend=str(body.get("trend")), bias=str(body.get("bias")),
        range=None if not held else {"high": p.px(held["high"]), "low": p.px(held["low"]), "since": iso(held["since"]),
                                     "bars": held.get("bars")},
        swings=[{"time": iso(s["ts"]), "price": p.px(s["price"]), "kind": s["kind"], "label": s["label"]}
                for s in (body.get("swings") or [])[-6:]],
        events=[{"time": iso(e["ts"]), "type": e["type"], "direction": e["direction"], "level": p.px(e["level"])}
                for e in (body.get("events") or [])[-4:]],
        key_levels=sorted(({"price": k["price"], "kind": k["kind"], "distance_pct": rnd(k["distance_pct"], 2)}
                           for k in body.get("key_levels") or []), key=lambda k: abs(k["distance_pct"] or 0))[:8],
        wyckoff=[{"time": iso(w["ts"]), "type": w["type"], "level": p.px(w["level"]),
                  "volume_ratio": rnd(w["volume_ratio"], 2), "atr_multiple": rnd(w["atr_multiple"], 2)}
                 for w in (body.get("wyckoff") or [])[-5:]],
        divergences=[{"time": iso(d["ts"]), "kind": d["kind"], "direction": d["direction"], "price": p.px(d["price"]),
                      "prev_time": iso(d["prev_ts"]), "prev_price": p.px(d["prev_price"]),
                      "cum_delta": p.qty(d["cum_delta"]), "prev_cum_delta": p.qty(d["prev_cum_delta"])}
                     for d in (body.get("divergences") or [])[-3:]],
        delta_divergences=[{"time": iso(d["ts"]), "type": d["type"]}
                           for d in (body.get("delta_divergences") or [])[-5:]])


def _structure_text(r: m.Structure) -> str:
    lines = [f"close {r.close}, trend {r.trend}, bias {r.bias}"]
    if r.range:
        lines.append(f"range {r.range['low']}–{r.range['high']} since {r.range['since']} ({r.range['bars']} bars)")
    if r.swings:
        lines.append("swings: " + ", ".join(f"{s['label'] or s['kind']} {s['price']} {_short(s['time'])}"
                                            for s in r.swings))
    if r.events:
        lines.append("breaks: " + ", ".join(f"{e['direction']} {e['type']} {e['level']} {_short(e['time'])}"
                                            for e in r.events))
    if r.key_levels:
        lines.append("key levels: " + ", ".join(f"{k['kind']} {k['price']} ({signed(k['distance_pct'], 2)}%)"
                                                for k in r.key_levels))
    if r.wyckoff:
        lines.append("Wyckoff candidates (inputs, not verdicts): " + ", ".join(_candidate(w) for w in r.wyckoff))
    if r.divergences:
        lines.append("CVD divergences: " + ", ".join(
            f"{d['direction']} at {d['kind']} {d['price']} vs {d['prev_price']} {_cum(d)} {_short(d['time'])}"
            for d in r.divergences))
    if r.delta_divergences:
        lines.append("bars closing against their delta: " + ", ".join(_against(d) for d in r.delta_divergences))
    return "\n".join(lines)


def _candidate(w: dict[str, Any]) -> str:
    return f"{w['type']} {w['level']} {_short(w['time'])} vol×{w['volume_ratio']} {w['atr_multiple']} ATR"


def _cum(d: dict[str, Any]) -> str:
    return f"(cum delta {d['cum_delta']} vs {d['prev_cum_delta']})"


def _against(d: dict[str, Any]) -> str:
    return f"{_short(d['time'])} {d['type'].replace('_', ' ')}"


def _short(t: str | None) -> str:
    """``2026-11-29T15:30Z``: an ISO-8601 UTC time to the minute, for a time inside a line."""
    return "" if t is None else f"{t[:16]}Z"


# -- the whole picture ----------------------------------------------------------------------------


async def _part(parts: dict[str, Any], failed: dict[str, str], name: str, call: Awaitable[dict[str, Any]]) -> None:
    try:
        parts[name] = await call
    except ToolError as exc:
        failed[name] = str(exc)


async def wyckoff_context(client: WadmClient, symbol: str, exchange: str | None,
                          market: str | None) -> tuple[m.Context, str]:
    found = await client.markets_of(symbol, exchange, market)
    p = Precision.of(found)
    where = _where(exchange, market)
    path = f"/api/v1/{{}}/{symbol}"
    parts: dict[str, Any] = {}
    failed: dict[str, str] = {}
    # The context lists no key levels: the swings alone spare WADM each window's volume profile.
    calls = {f"structure_{iv}": client.get(path.format("market-structure"),
                                           where | {"interval": iv, "window": w, "levels": "swings"})
             for iv, w in CONTEXT_TIMEFRAMES.items()}
    calls |= {
        "session": client.get(path.format("volume-profile"), where | _window("session") | {"naked": "false"}),
        "composite": client.get(path.format("volume-profile"), where | {"window": "7d"}),
        "flow": client.get(path.format("order-flow/current"), where),
        "footprint": client.get(f"/api/v1/order-flow/{symbol}/footprint", where | {"interval": "15m", "limit": 16}),
        "gaps": client.get("/api/v1/gaps", where | {"symbol": symbol, "window": "24h", "limit": 1000}),
    }
    # First the two calls that read the widest windows: 7 days of hourly bars from a 4h boundary,
    # and 24 hours of minutes. WADM keeps what they loaded for a moment; each of the others is sent
    # as soon as the call whose bars it reads is in, and reads them instead of loading them again.
    after = {"structure_4h": ("structure_1h", "composite"),
             "structure_15m": ("session", "footprint", "flow", "gaps")}

    async def then(first: str) -> None:
        await _part(parts, failed, first, calls[first])
        await asyncio.gather(*(_part(parts, failed, k, calls[k]) for k in after[first]))

    await asyncio.gather(*(then(first) for first in after))
    if len(failed) == len(calls):
        raise ToolError(next(iter(failed.values())))
    scope: dict[str, Any] = {"symbol": symbol, "markets": names(found), "time": iso(time.time() * 1000),
             "data_complete": all(parts[k].get("data_complete", True) for k in parts if k != "gaps"),
             "gaps": len(parts.get("gaps", {}).get("gaps") or [])}
    frames = {iv: _structure(parts[f"structure_{iv}"], p, scope, iv) for iv in CONTEXT_TIMEFRAMES
              if f"structure_{iv}" in parts}
    flow = _flow(parts["flow"], p, scope) if "flow" in parts else None
    value: dict[str, Any] = {}
    for name in ("session", "composite"):
        if name in parts:
            prof = _profile(parts[name], p, scope, "session" if name == "session" else "7d")
            value[name] = {"poc": prof.poc, "vah": prof.vah, "val": prof.val, "volume": prof.total_volume,
                           "delta": prof.delta}
            if name == "composite":
                value["naked_pocs"] = prof.naked_pocs
    bars = [_fp_bar(b, p, False) for b in (parts.get("footprint", {}).get("bars") or [])]
    clusters = [{"time": b["start"], **s} for b in bars for s in b["stacked"]][-4:]
    detail = m.ContextDetail(
        **scope, price=flow.price if flow else None,
        price_source=_source(parts.get("structure_1h")), cvd_today=flow.cvd if flow else None,
        deltas={k: w["delta"] for k, w in flow.windows.items()} if flow else {},
        timeframes={iv: {"trend": f.trend, "bias": f.bias, "range": f.range,
                         "swings": [[s["label"] or s["kind"], s["price"]] for s in f.swings[-4:]],
                         "events": [[e["direction"], e["type"], e["level"], e["time"]] for e in f.events[-2:]]}
                    for iv, f in frames.items()},
        value=value,
        divergences=[{"interval": iv, **d} for iv, f in frames.items() for d in f.divergences[-1:]],
        absorption=[{"interval": iv, **d} for iv, f in frames.items() if iv != "4h" for d in f.delta_divergences[-3:]],
        imbalance_clusters=clusters,
        wyckoff=[{"interval": iv, **w} for iv, f in frames.items() for w in f.wyckoff[-2:]],
        large_trades=_large_summary(flow),
        book=[{"market": b["market"], "state": b["state"], "imbalance": b["imbalance"]} for b in flow.book] if flow
        else [],
        completeness=_completeness(parts, found), unavailable=failed)
    return _compact(detail), _context_text(detail, found, parts)


def _compact(r: m.ContextDetail) -> m.Context:
    """The structured copy of the context: rows as lists under ``columns``, a third of the tokens."""
    def rows(items: Rows, keys: list[str]) -> list[list[Any]]:
        return [[item.get(k) for k in keys] for item in items]

    frames = {iv: f | {"range": None if not f["range"] else [f["range"]["low"], f["range"]["high"],
                                                              f["range"]["since"]]}
              for iv, f in r.timeframes.items()}
    return m.Context(
        symbol=r.symbol, markets=r.markets, time=r.time, data_complete=r.data_complete, gaps=r.gaps,
        columns=m.CONTEXT_COLUMNS, price=r.price, price_source=r.price_source, cvd_today=r.cvd_today,
        deltas=r.deltas, timeframes=frames, value=r.value,
        divergences=rows(r.divergences, ["interval", "direction", "kind", "price", "prev_price", "cum_delta",
                                         "prev_cum_delta", "time"]),
        absorption=rows(r.absorption, ["interval", "time", "type"]),
        imbalance_clusters=rows(r.imbalance_clusters, ["time", "side", "from", "to"]),
        wyckoff=rows(r.wyckoff, ["interval", "type", "level", "time", "volume_ratio", "atr_multiple"]),
        large_trades={k: v for k, v in r.large_trades.items() if k != "newest"},
        book={b["market"]: [b["imbalance"].get(k) for k in ("0.1%", "0.5%", "1%")] for b in r.book},
        completeness=r.completeness, unavailable=r.unavailable)


def _source(body: dict[str, Any] | None) -> str | None:
    src = (body or {}).get("price_source")
    return f"{src['exchange']} {src['market']}" if src else None


def _large_summary(flow: m.Flow | None) -> dict[str, Any]:
    if flow is None:
        return {}
    trades = flow.large_trades
    buy = sum(t["notional"] for t in trades if t["side"] == "buy")
    sell = sum(t["notional"] for t in trades if t["side"] == "sell")
    return {"threshold": flow.large_notional, "count": len(trades), "buy_notional": buy, "sell_notional": sell,
            "newest": trades[:2]}


def _completeness(parts: dict[str, Any], found: list[Listing]) -> dict[str, Any]:
    """Recorded gaps of the last 24 h, and what else the windows lack (before collection began, say)."""
    gaps: Rows = parts.get("gaps", {}).get("gaps") or []
    missing = sum(g["end"] - g["start"] for g in gaps) / 1000
    reasons: dict[str, int] = {}
    for name, body in parts.items():
        for g in body.get("gaps") or [] if name != "gaps" else []:
            reasons[g.get("reason") or "gap"] = reasons.get(g.get("reason") or "gap", 0) + 1
    since = min((r.since for r in found if r.since), default=None)
    return {"gaps_24h": len(gaps), "missing_s": round(missing), "collected_since": iso(since),
            "window_gaps_by_reason": reasons}


def _context_text(r: m.ContextDetail, found: list[Listing], parts: dict[str, Any]) -> str:
    over = _over(found, next(iter(parts.values()), {}))
    lines = [f"{r.symbol} Wyckoff context at {r.time} ({over}; prices from {r.price_source})",
             f"price {r.price} | CVD today {r.cvd_today} | delta " + ", ".join(f"{k} {v}" for k, v in r.deltas.items())]
    for iv, f in r.timeframes.items():
        line = f"{iv}: trend {f['trend']}, bias {f['bias']}"
        if f["range"]:
            line += f", range {f['range']['low']}–{f['range']['high']} since {_short(f['range']['since'])}"
        if f["swings"]:
            line += "; swings " + ", ".join(f"{label} {price}" for label, price in f["swings"])
        if f["events"]:
            line += "; breaks " + ", ".join(f"{direction} {kind} {level} {_short(at)}"
                                            for direction, kind, level, at in f["events"])
        lines.append(line)
    for name, v in r.value.items():
        if name != "naked_pocs":
            lines.append(f"{name} value: POC {v['poc']} VAH {v['vah']} VAL {v['val']} (volume {v['volume']}, "
                         f"delta {v['delta']})")
    if r.value.get("naked_pocs"):
        lines.append("naked POCs: " + ", ".join(f"{n['poc']} ({n['session']})" for n in r.value["naked_pocs"]))
    if r.divergences:
        lines.append("CVD divergences at swings: " + "; ".join(
            f"{d['interval']} {d['direction']} {d['kind']} {d['price']} vs {d['prev_price']} {_cum(d)}"
            for d in r.divergences))
    if r.absorption:
        lines.append("absorption (bars closing against their delta): " + ", ".join(
            f"{d['interval']} {_against(d)}" for d in r.absorption))
    if r.imbalance_clusters:
        lines.append("stacked imbalances (15m): " + ", ".join(
            f"{c['side']} {c['from']}–{c['to']} {_short(c['time'])}" for c in r.imbalance_clusters))
    if r.wyckoff:
        lines.append("Wyckoff candidates (inputs, not verdicts): " + "; ".join(
            f"{w['interval']} {_candidate(w)}" for w in r.wyckoff))
    lt = r.large_trades
    if lt.get("count"):
        lines.append(f"large trades (≥ {lt['threshold']:,.0f}, last 15m): {lt['count']} listed, buy "
                     f"{lt['buy_notional']:,} vs sell {lt['sell_notional']:,}")
    for b in r.book:
        lines.append(f"book {b['market']} {b['state']}: imbalance " + " ".join(
            f"{k} {signed(v, 3)}" for k, v in b["imbalance"].items()))
    c = r.completeness
    why = ", ".join(f"{k.replace('_', ' ')} ×{v}" for k, v in c["window_gaps_by_reason"].items())
    lines.append(f"data: {'complete' if r.data_complete else 'INCOMPLETE (' + why + ')'}; collected since "
                 f"{c['collected_since']}; {c['gaps_24h']} recorded gap(s) in 24h ({c['missing_s']} s missing)")
    for name, why in r.unavailable.items():
        lines.append(f"unavailable {name}: {why}")
    return "\n".join(lines)
