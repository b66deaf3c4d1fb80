"""Instrument metadata read at start: request-weight limits and which symbols trade.

PROTOCOLS.md §1.5 asks to read the weight budget from ``exchangeInfo.rateLimits`` rather than
hard-code it, and §5.8 and §5.11 to check symbols against the venue's list (``exchangeInfo``,
``instruments-info``) before relying on them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from wadm.records import Market
from wadm.transport.rest import RestClient, RestError

__all__ = ["NOT_LISTED", "binance_symbols", "bybit_symbols"]

log = logging.getLogger(__name__)

NOT_LISTED = "not listed"
_PATHS = {Market.SPOT: ("/api/v3/exchangeInfo", 20), Market.USDM: ("/fapi/v1/exchangeInfo", 1)}


async def binance_symbols(client: RestClient, market: Market, symbols: list[str]) -> dict[str, str]:
    """Return each symbol's venue status (``TRADING``, ``BREAK``... or ``not listed``); adopt the weight limit.

    Returns an empty mapping when the venue cannot be asked (the caller then assumes nothing).
    """
    path, weight = _PATHS[market]
    # Spot answers for just our symbols (and refuses the whole list if one is unknown); USD-M
    # answers for every symbol it lists.
    params = {"symbols": orjson.dumps(symbols).decode()} if market is Market.SPOT else {}
    try:
        info = await client.get(path, params, weight=weight)
    except RestError as exc:
        if exc.status == 400 and market is Market.SPOT and len(symbols) > 1:
            out: dict[str, str] = {}
            for symbol in symbols:
                out |= await binance_symbols(client, market, [symbol])
            return out
        if exc.status == 400:
            return dict.fromkeys(symbols, NOT_LISTED)
        log.info("binance/%s: could not read exchangeInfo (%s); keeping the default request budget", market, exc)
        return {}
    if not isinstance(info, dict):
        return {}
    _adopt_limit(client, market, info)
    listed = {x.get("symbol"): str(x.get("status")) for x in info.get("symbols", []) if isinstance(x, dict)}
    return {symbol: listed.get(symbol, NOT_LISTED) for symbol in symbols}


def _adopt_limit(client: RestClient, market: Market, info: dict[str, Any]) -> None:
    for rule in info.get("rateLimits", []):
        if (isinstance(rule, dict) and rule.get("rateLimitType") == "REQUEST_WEIGHT"
                and rule.get("interval") == "MINUTE" and rule.get("intervalNum") == 1
                and isinstance(rule.get("limit"), int) and rule["limit"] > 0):
            if rule["limit"] != client.budget.limit:
                client.budget.set_limit(rule["limit"])
                log.info("binance/%s: the venue allows %d request weight per minute", market, rule["limit"])
            return


async def bybit_symbols(client: RestClient, market: Market, symbols: list[str]) -> dict[str, str]:
    """Return each symbol's Bybit status (``Trading``, ``PreLaunch``, ``Delivering``... or ``not listed``).

    One ``instruments-info`` request per symbol (the full list is paginated); a symbol the venue
    could not be asked about is left out of the answer.
    """
    out: dict[str, str] = {}
    for symbol in symbols:
        try:
            answer = await client.get("/v5/market/instruments-info", {"category": market.value, "symbol": symbol})
        except RestError as exc:
            log.info("bybit/%s: could not read instruments-info for %s (%s)", market, symbol, exc)
            continue
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict) or answer.get("retCode") != 0:
            continue
        listed = [x for x in result.get("list") or [] if isinstance(x, dict) and x.get("symbol") == symbol]
        out[symbol] = str(listed[0].get("status")) if listed else NOT_LISTED
    return out
