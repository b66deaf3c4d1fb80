"""Query parameter parsing: every accepted form, every refused form, and cursors bound to their query."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wadm.api.params import (
    MAX_CURSOR_CHARS,
    TIME_MAX_NS,
    TIME_MIN_NS,
    decode_cursor,
    encode_cursor,
    parse_choice,
    parse_exchange,
    parse_limit,
    parse_market,
    parse_range,
    parse_symbol,
    parse_time,
    parse_window,
    resolve_series,
)
from wadm.config import StreamTarget
from wadm.errors import QueryError
from wadm.records import Market, Venue

NEW_YEAR_2026 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in epoch ns
MS = 1_000_000
S = 1_000_000_000
LONG = "a" * 10_240


def refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> QueryError:
    """The QueryError ``fn`` raises, checked for the fields every refusal carries."""
    with pytest.raises(QueryError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.status, err.code) == (400, "invalid_parameter")
    return err


def assert_short_echo(err: QueryError, raw: str) -> None:
    """A long value is never echoed whole: at most about 40 of its characters come back."""
    message = str(err)
    assert raw not in message
    assert raw[:50] not in message
    assert "…" in message
    assert f"({len(raw)} characters)" in message
    assert len(message) < 600


# --- integers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("10000", 10000), ("007", 7), ("250", 250)])
def test_limit_accepts_ascii_digits(raw: str, expected: int) -> None:
    assert parse_limit(raw, default=100, maximum=10_000) == expected


def test_limit_absent_is_the_default() -> None:
    assert parse_limit(None, default=100, maximum=10_000) == 100


def test_limit_minimum_can_be_lowered() -> None:
    assert parse_limit("0", default=5, maximum=10, name="rows", minimum=0) == 0
    assert refused(parse_limit, "11", default=5, maximum=10, name="rows", minimum=0).parameter == "rows"


@pytest.mark.parametrize("raw", [
    "", "0", "10001", "-5", "+5", " 5", "5 ", "5\n", "5_0", "1_000", "1e3", "0x10", "1.0", "5.", "１２",
    "５", "٥", "５0", "1234567890", "99999999999999999999", "\x00", "five", "5,0",
])
def test_limit_refuses_anything_but_ascii_digits_in_range(raw: str) -> None:
    err = refused(parse_limit, raw, default=100, maximum=10_000)
    assert err.parameter == "limit"
    assert str(err).startswith("limit must be an integer from 1 to 10000 in ASCII digits, got ")


def test_limit_error_names_the_parameter_and_escapes_look_alikes() -> None:
    err = refused(parse_limit, "５", default=20, maximum=1000, name="depth")
    assert err.parameter == "depth"
    assert str(err) == (r"depth must be an integer from 1 to 1000 in ASCII digits, got '\uff15'; "
                        "only ASCII characters are accepted")


def test_limit_empty_is_an_error_not_the_default() -> None:
    assert str(refused(parse_limit, "", default=100, maximum=10_000)).endswith("got ''")


@pytest.mark.parametrize("raw", [LONG, "9" * 10_000, "\x00" * 5000, "\u202e" * 5000])
def test_limit_never_echoes_a_long_value(raw: str) -> None:
    assert_short_echo(refused(parse_limit, raw, default=1, maximum=10), raw)


# --- times: accepted -----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("1767225600123", NEW_YEAR_2026 + 123 * MS),
    ("946684800000", TIME_MIN_NS),
    ("4102444800000", TIME_MAX_NS),
    ("2026-01-01", NEW_YEAR_2026),
    ("2026-01-01T00:00", NEW_YEAR_2026),
    ("2026-01-01T03:04", NEW_YEAR_2026 + (3 * 3600 + 4 * 60) * S),
    ("2026-01-01T03:04:05", NEW_YEAR_2026 + (3 * 3600 + 4 * 60 + 5) * S),
    ("2026-01-01 03:04:05", NEW_YEAR_2026 + (3 * 3600 + 4 * 60 + 5) * S),
    ("2026-01-01 03:04", NEW_YEAR_2026 + (3 * 3600 + 4 * 60) * S),
    ("2026-01-01T00:00:00Z", NEW_YEAR_2026),
    ("2026-01-01T00:00Z", NEW_YEAR_2026),
    ("2026-01-01T00:00:00.123Z", 1_767_225_600_123_000_000),
    ("2026-01-01T00:00:00.1Z", NEW_YEAR_2026 + 100 * MS),
    ("2026-01-01T00:00:00.12", NEW_YEAR_2026 + 120 * MS),
    ("2026-01-01T00:00:00.000000001Z", NEW_YEAR_2026),  # truncated to the millisecond
    ("2026-01-01T00:00:00.123999999Z", NEW_YEAR_2026 + 123 * MS),  # truncated, not rounded
    ("2026-01-01T00:00:59.9999", NEW_YEAR_2026 + 59 * S + 999 * MS),  # never rounded up to the next second
    ("2026-01-01T02:00:00+02:00", NEW_YEAR_2026),
    ("2026-01-01T02:00+02:00", NEW_YEAR_2026),
    ("2025-12-31T19:30:00-04:30", NEW_YEAR_2026),
    ("2026-01-01T00:00:00-00:00", NEW_YEAR_2026),
    ("2026-01-01T00:00:00+00:00", NEW_YEAR_2026),
    ("2026-01-01T05:45:00.5+05:45", NEW_YEAR_2026 + 500 * MS),
    ("2024-02-29", 1_709_164_800_000 * MS),
    ("2000-01-01T00:00:00Z", TIME_MIN_NS),
    ("2000-01-01T01:00:00+01:00", TIME_MIN_NS),
    ("2100-01-01T00:00:00Z", TIME_MAX_NS),
    ("2099-12-31T23:59:59.999Z", TIME_MAX_NS - MS),
    # int(dt.timestamp() * 1000) gives ...692 here: the float loses the millisecond.
    ("2039-07-06T01:24:33.693Z", 2_193_528_273_693 * MS),
])
def test_time_accepted_forms(raw: str, expected: int) -> None:
    assert parse_time("start", raw) == expected


def test_time_absent_is_none() -> None:
    assert parse_time("start", None) is None


# --- times: refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    "",
    " 2026-01-01",
    "2026-01-01 ",
    "2026-01-01\n",
    "2026-01-01ZZ",
    "2026-01-01T00:00:00ZZ",
    "2026-01-01Z",  # an offset needs a time
    "2026-1-1",
    "2026-01-1",
    "26-01-01",
    "+2026-01-01",
    "2026/01/01",
    "2026-W01-1",
    "2026-W01",
    "2026-001",
    "2026-01",
    "T00:00:00",
    "00:00:00",
    "2026-01-01T00",
    "2026-01-01T0:00",
    "2026-01-01T00:00:0",
    "2026-01-01T000000",
    "2026-01-01t00:00:00",
    "2026-01-01T00:00:00z",
    "2026-01-01T00:00:00.",
    "2026-01-01T00:00:00,5",
    "2026-01-01T00:00.5",
    "2026-01-01T00:00:00.1234567890Z",
    "2026-01-01T00:00:00+0200",
    "2026-01-01T00:00:00+02",
    "2026-01-01T00:00:00 +02:00",
    "2026-01-01T00:00:00UTC",
    "2026-01-01T00:00:00GMT+1",
    "2026-01-01TT00:00:00",
    "2026-01-01  00:00:00",
    "-1767225600000",
    "+1767225600000",
    "1767225600000.5",
    "1_767_225_600_000",
    "1767225600000 ",
    "0x66f0",
    "now",
    "yesterday",
    "null",
    "２０２６-01-01",
    "2026\u201001\u201001",  # U+2010 HYPHEN
    "2026-01-01T00:00:00.５",
    "１７６７２２５６００１２３",
    "2026-01-01\u2007",
    "2026-01-01T00:00:00\u00a0Z",
])
def test_time_refuses_other_forms(raw: str) -> None:
    err = refused(parse_time, "start", raw)
    assert err.parameter == "start"
    assert str(err).startswith("start must be epoch milliseconds or ISO-8601 such as 2026-01-02, ")


@pytest.mark.parametrize(("raw", "what"), [
    ("2026-02-30", "a real calendar date"),
    ("2026-13-01", "a real calendar date"),
    ("2026-00-10", "a real calendar date"),
    ("2025-02-29", "a real calendar date"),
    ("0000-01-01", "a real calendar date"),
    ("2026-01-01T24:00", "a time of day"),
    ("2026-01-01T23:60", "a time of day"),
    ("2026-01-01T23:59:60", "a time of day"),
    ("2026-01-01T00:00:00+24:00", "a UTC offset"),
    ("2026-01-01T00:00:00-05:60", "a UTC offset"),
])
def test_time_refuses_impossible_fields(raw: str, what: str) -> None:
    err = refused(parse_time, "end", raw)
    assert err.parameter == "end"
    assert str(err).startswith(f"end must be {what}")


@pytest.mark.parametrize("raw", [
    "0", "1", "2026", "946684799999", "4102444800001", "9223372036855", "99999999999999999999",
    "1999-12-31T23:59:59.999Z", "1999-12-31", "2100-01-01T00:00:00.001Z", "2100-01-01T00:00:00-00:01",
    "2100-01-02", "9999-12-31T23:59:59Z", "0001-01-01", "1970-01-01T00:00:00Z",
])
def test_time_refuses_out_of_range(raw: str) -> None:
    err = refused(parse_time, "start", raw)
    assert err.parameter == "start"
    assert str(err).startswith("start must be between 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z "
                               "(epoch milliseconds 946684800000 to 4102444800000), got ")


def test_basic_format_date_is_not_epoch_ms() -> None:
    err = refused(parse_time, "start", "20260101")
    assert err.parameter == "start"
    assert "basic-format date" in str(err)
    assert "write 2026-01-01 or give epoch milliseconds" in str(err)
    # 8 digits that are not a date still get the general advice.
    assert "write YYYY-MM-DD or give epoch milliseconds" in str(refused(parse_time, "end", "20261399"))


@pytest.mark.parametrize(("raw", "unit", "ms"), [
    ("1767225600", "seconds", "1767225600000"),
    ("1767225600123000", "microseconds", "1767225600123"),
    ("1767225600123000000", "nanoseconds", "1767225600123"),
])
def test_epoch_in_another_unit_gets_a_hint(raw: str, unit: str, ms: str) -> None:
    message = str(refused(parse_time, "start", raw))
    assert f"looks like epoch {unit}; give epoch milliseconds ({ms})" in message


def test_plus_sign_lost_in_the_url_gets_a_hint() -> None:
    # An unencoded '+' in a query string arrives as a space.
    message = str(refused(parse_time, "end", "2026-01-01T00:00:00 02:00"))
    assert "%2B" in message
    assert "got '2026-01-01T00:00:00 02:00'" in message


def test_time_non_ascii_is_escaped_in_the_message() -> None:
    message = str(refused(parse_time, "start", "２０２６-01-01"))
    assert r"got '\uff12\uff10\uff12\uff16-01-01'" in message
    assert "only ASCII characters are accepted" in message


@pytest.mark.parametrize("raw", [LONG, "9" * 10_000, "2026-01-01" + "0" * 10_000, "\x00" * 10_000,
                                 "２" * 10_000, "'" * 5000 + '"' * 5000])
def test_time_never_echoes_a_long_value(raw: str) -> None:
    assert_short_echo(refused(parse_time, "start", raw), raw)


# --- window --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "seconds"), [
    ("1s", 1), ("15m", 900), ("1h", 3600), ("4h", 14400), ("24h", 86400), ("7d", 604800), ("30d", 2592000),
    ("720h", 2592000), ("43200m", 2592000), ("000001s", 1), ("90s", 90),
])
def test_window_accepted(raw: str, seconds: int) -> None:
    assert parse_window(raw) == seconds * S


def test_window_absent_is_none() -> None:
    assert parse_window(None) is None


@pytest.mark.parametrize("raw", [
    "", "0s", "0d", "31d", "721h", "2592001s", "１h", "1ｈ", "1H", "1D", "1 h", " 1h", "1h ", "+1h", "-1h",
    "1.5h", "1_0m", "2592000s", "1w", "1y", "9y", "h", "1", "1234567s", "1hh", "1h1m", "PT1H", "٣h",
])
def test_window_refused(raw: str) -> None:
    err = refused(parse_window, raw)
    assert err.parameter == "window"
    assert str(err).startswith("window must be an ASCII number and a unit s/m/h/d between 1s and 30d")


def test_window_never_echoes_a_long_value() -> None:
    raw = "9" * 10_000 + "s"
    assert_short_echo(refused(parse_window, raw), raw)


# --- range ---------------------------------------------------------------------------------------

NOW = NEW_YEAR_2026 + 12 * 3600 * S
SPAN = 3600 * S


def test_range_window_ends_now() -> None:
    assert parse_range(None, None, "15m", now=NOW, default_span=SPAN) == (NOW - 900 * S, NOW)


@pytest.mark.parametrize(("start", "end"), [("2026-01-01", None), (None, "2026-01-01"), ("2026-01-01", "2026-01-02")])
def test_range_window_excludes_start_and_end(start: str | None, end: str | None) -> None:
    err = refused(parse_range, start, end, "1h", now=NOW, default_span=SPAN)
    assert err.parameter == "window"
    assert str(err) == "give either window or start/end, not both"


def test_range_defaults() -> None:
    assert parse_range(None, None, None, now=NOW, default_span=SPAN) == (NOW - SPAN, NOW)
    assert parse_range("2026-01-01", None, None, now=NOW, default_span=SPAN) == (NEW_YEAR_2026, NOW)
    assert parse_range(None, "2026-01-01T06:00Z", None, now=NOW, default_span=SPAN) == (
        NEW_YEAR_2026 + 5 * 3600 * S, NEW_YEAR_2026 + 6 * 3600 * S)
    assert parse_range("1767225600000", "2026-01-01T00:00:00.001Z", None, now=NOW, default_span=SPAN) == (
        NEW_YEAR_2026, NEW_YEAR_2026 + MS)


def test_range_start_equal_to_end_is_allowed() -> None:
    assert parse_range("2026-01-01", "1767225600000", None, now=NOW, default_span=SPAN) == (
        NEW_YEAR_2026, NEW_YEAR_2026)


def test_range_start_after_end_is_refused() -> None:
    err = refused(parse_range, "2026-01-02", "2026-01-01", None, now=NOW, default_span=SPAN)
    assert err.parameter == "start"
    assert str(err) == "start must not be after end (start 1767312000000 > end 1767225600000, epoch milliseconds)"
    # start after the default end (now)
    assert refused(parse_range, "2026-01-02", None, None, now=NOW, default_span=SPAN).parameter == "start"


def test_range_default_start_is_clamped_to_2000() -> None:
    now = TIME_MIN_NS + 10 * S
    assert parse_range(None, None, None, now=now, default_span=SPAN) == (TIME_MIN_NS, now)
    assert parse_range(None, None, "1d", now=now, default_span=SPAN) == (TIME_MIN_NS, now)
    assert parse_range(None, "2000-01-01T00:00:00Z", None, now=NOW, default_span=SPAN) == (TIME_MIN_NS, TIME_MIN_NS)
    assert parse_range(None, "2000-01-01T00:30Z", None, now=NOW, default_span=SPAN) == (
        TIME_MIN_NS, TIME_MIN_NS + 1800 * S)


@pytest.mark.parametrize(("args", "parameter"), [
    (("", None, None), "start"), ((None, "", None), "end"), ((None, None, ""), "window"),
    (("20260101", None, None), "start"), ((None, "1767225600", None), "end"), ((None, None, "１h"), "window"),
    (("2026-01-01ZZ", "2026-01-02", None), "start"), (("2026-01-01", "2026-1-2", None), "end"),
])
def test_range_names_the_bad_parameter(args: tuple[str | None, str | None, str | None], parameter: str) -> None:
    assert refused(parse_range, *args, now=NOW, default_span=SPAN).parameter == parameter


# --- choices -------------------------------------------------------------------------------------

INTERVALS = ("1m", "5m", "15m", "1h", "4h")


def test_choice_exact_match() -> None:
    assert parse_choice("interval", "15m", INTERVALS, "1m") == "15m"
    assert parse_choice("interval", None, INTERVALS, "1m") == "1m"
    assert parse_choice("channel", "", ("", "book"), "book") == ""  # only when '' is itself a choice


@pytest.mark.parametrize("raw", ["", "1M", "1H", " 1m", "1m ", "１m", "1ｍ", "2m", "1m\x00", "60"])
def test_choice_refused(raw: str) -> None:
    err = refused(parse_choice, "interval", raw, INTERVALS, "1m")
    assert err.parameter == "interval"
    assert str(err).startswith("interval must be one of 1m, 5m, 15m, 1h, 4h, got ")


def test_choice_empty_is_an_error_not_absent() -> None:
    err = refused(parse_choice, "channel", "", ("trades", "book", "klines"), "trades")
    assert str(err) == "channel must be one of trades, book, klines, got ''"


def test_choice_never_echoes_a_long_value() -> None:
    assert_short_echo(refused(parse_choice, "interval", LONG, INTERVALS, "1m"), LONG)


@pytest.mark.parametrize(("raw", "venue"), [
    ("binance", Venue.BINANCE), ("bybit", Venue.BYBIT), ("BINANCE", Venue.BINANCE), ("ByBit", Venue.BYBIT),
])
def test_exchange_is_ascii_case_insensitive(raw: str, venue: Venue) -> None:
    assert parse_exchange(raw) is venue


@pytest.mark.parametrize(("raw", "market"), [
    ("spot", Market.SPOT), ("usdm", Market.USDM), ("linear", Market.LINEAR), ("SPOT", Market.SPOT),
    ("Linear", Market.LINEAR),
])
def test_market_is_ascii_case_insensitive(raw: str, market: Market) -> None:
    assert parse_market(raw) is market


def test_exchange_and_market_absent_are_none() -> None:
    assert parse_exchange(None) is None
    assert parse_market(None) is None


def test_exchange_empty_is_an_error() -> None:
    err = refused(parse_exchange, "")
    assert err.parameter == "exchange"
    assert str(err) == "exchange must be one of binance, bybit, got ''"
    err = refused(parse_market, "")
    assert err.parameter == "market"
    assert str(err) == "market must be one of spot, usdm, linear, got ''"


@pytest.mark.parametrize("raw", [
    "okx", "binance ", " binance", "binance\x00", "bіnance",  # Cyrillic і
    "ｂｉｎａｎｃｅ", "BİNANCE", "bin", "binance,bybit", "binance&market=spot",
])
def test_exchange_refused(raw: str) -> None:
    err = refused(parse_exchange, raw)
    assert err.parameter == "exchange"
    assert str(err).startswith("exchange must be one of binance, bybit, got ")


@pytest.mark.parametrize("raw", ["ſpot", "SPOT\u200b", "ｓｐｏｔ", "futures", "usd-m", "linear\n"])
def test_market_refused(raw: str) -> None:
    err = refused(parse_market, raw)
    assert err.parameter == "market"
    assert str(err).startswith("market must be one of spot, usdm, linear, got ")


def test_exchange_never_echoes_a_long_value() -> None:
    assert_short_echo(refused(parse_exchange, LONG), LONG)


# --- symbols -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("BTCUSDT", "BTCUSDT"), ("btcusdt", "BTCUSDT"), ("EthUsdt", "ETHUSDT"), ("1000PEPEUSDT", "1000PEPEUSDT"),
    ("AB", "AB"), ("A" * 20, "A" * 20), ("12", "12"),
])
def test_symbol_accepted(raw: str, expected: str) -> None:
    assert parse_symbol(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "A", "A" * 21, "BTC-USDT", "BTC/USDT", "BTC_USDT", "BTC USDT", " BTCUSDT", "BTCUSDT ", "BTCUSDT\n",
    "btcuſdt",  # 'ſ'.upper() == 'S'
    "ﬀ",  # 'ﬀ'.upper() == 'FF'
    "ＢＴＣＵＳＤＴ", "BTCUSDТ",  # Cyrillic Т
    "BTCUSDT\x00", "../etc", "BTCUSDT%00", "*", "BTC.USDT",
])
def test_symbol_refused(raw: str) -> None:
    err = refused(parse_symbol, raw)
    assert err.parameter == "symbol"
    assert str(err).startswith("symbol must be 2 to 20 ASCII letters or digits, as the venue writes it")


def test_symbol_never_echoes_a_long_value() -> None:
    assert_short_echo(refused(parse_symbol, LONG), LONG)


TARGETS = [
    StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT", "ETHUSDT")),
    StreamTarget(venue=Venue.BINANCE, market=Market.USDM, symbols=("BTCUSDT",)),
    StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("SOLUSDT",)),
]


@pytest.mark.parametrize(("symbol", "exchange", "market", "expected"), [
    ("ETHUSDT", None, None, (Venue.BINANCE, Market.SPOT)),
    ("ethusdt", None, None, (Venue.BINANCE, Market.SPOT)),
    ("BTCUSDT", "binance", "usdm", (Venue.BINANCE, Market.USDM)),
    ("BTCUSDT", None, "spot", (Venue.BINANCE, Market.SPOT)),
    ("btcusdt", "BINANCE", "SPOT", (Venue.BINANCE, Market.SPOT)),
    ("SOLUSDT", "bybit", None, (Venue.BYBIT, Market.LINEAR)),
])
def test_resolve_series(symbol: str, exchange: str | None, market: str | None,
                        expected: tuple[Venue, Market]) -> None:
    assert resolve_series(TARGETS, symbol, exchange, market) == expected


def test_resolve_series_ambiguous() -> None:
    err = refused(resolve_series, TARGETS, "BTCUSDT", None, None)
    assert err.parameter == "exchange"
    assert str(err) == ("BTCUSDT is collected on several markets; add one of: "
                        "exchange=binance&market=spot, exchange=binance&market=usdm")


def test_resolve_series_not_collected_is_404() -> None:
    with pytest.raises(QueryError) as info:
        resolve_series(TARGETS, "solusdt", "BINANCE", None)
    assert (info.value.status, info.value.code, info.value.parameter) == (404, "not_found", None)
    assert str(info.value) == "symbol SOLUSDT is not collected on binance; see /api/v1/symbols"
    with pytest.raises(QueryError) as info:
        resolve_series(TARGETS, "XRPUSDT", None, None)
    assert str(info.value) == "symbol XRPUSDT is not collected; see /api/v1/symbols"


@pytest.mark.parametrize(("symbol", "exchange", "market", "parameter"), [
    ("BTCUSDT", "", None, "exchange"),
    ("BTCUSDT", None, "", "market"),
    ("BTCUSDT", "okx", None, "exchange"),
    ("BTCUSDT", "bіnance", None, "exchange"),
    ("BTCUSDT", "binance", "ｓｐｏｔ", "market"),
    ("btcuſdt", None, None, "symbol"),
    ("", "binance", "spot", "symbol"),
    ("", "okx", None, "exchange"),  # exchange and market are checked before the symbol
    (LONG, None, None, "symbol"),
])
def test_resolve_series_refusals(symbol: str, exchange: str | None, market: str | None, parameter: str) -> None:
    err = refused(resolve_series, TARGETS, symbol, exchange, market)
    assert err.parameter == parameter
    assert LONG not in str(err)


def test_resolve_series_empty_exchange_message() -> None:
    err = refused(resolve_series, TARGETS, "BTCUSDT", "", "spot")
    assert str(err) == "exchange must be one of binance, bybit, got ''"


# --- cursors -------------------------------------------------------------------------------------

TRADES = ("trades", "binance", "spot", "BTCUSDT")
BYBIT = ("trades", "bybit", "linear", "BTCUSDT")
BOOK = ("book", "binance", "usdm", "BTCUSDT")
TS = NEW_YEAR_2026 + 123 * MS


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(scope: Any, position: Any) -> str:
    return b64(json.dumps([scope, position], separators=(",", ":"), ensure_ascii=False).encode())


def test_cursor_round_trips() -> None:
    binance = encode_cursor(TRADES, [TS, 3735683259])
    assert decode_cursor(binance, TRADES, (int, int)) == [TS, 3735683259]
    uuid = "a1b2c3d4-e5f6-4789-abcd-0123456789ab"
    assert decode_cursor(encode_cursor(BYBIT, [TS, uuid]), BYBIT, (int, str)) == [TS, uuid]
    assert decode_cursor(encode_cursor(BOOK, [TS + 1]), BOOK, (int,)) == [TS + 1]
    for ts in (TIME_MIN_NS, TIME_MAX_NS):
        assert decode_cursor(encode_cursor(BOOK, [ts]), BOOK, (int,)) == [ts]
    extremes = [-(2**63), 2**63 - 1]
    assert decode_cursor(encode_cursor(BOOK, extremes), BOOK, (int, int), time_index=None) == extremes


def test_cursor_is_url_safe_base64_of_compact_json() -> None:
    cursor = encode_cursor(TRADES, [TS, 5])
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)) == (
        b'[["trades","binance","spot","BTCUSDT"],[1767225600123000000,5]]')


@pytest.mark.parametrize("position", [[True], [1.5], [None], [2**63], [-(2**63) - 1], [2**64 - 1], [["x"]]])
def test_encode_cursor_refuses_what_decode_would_refuse(position: list[Any]) -> None:
    with pytest.raises(ValueError):
        encode_cursor(BOOK, position)


def test_encode_cursor_refuses_an_oversized_cursor() -> None:
    with pytest.raises(ValueError, match="exceeds 512"):
        encode_cursor(BYBIT, [TS, "x" * 400])


def test_encode_cursor_refuses_a_non_string_scope() -> None:
    with pytest.raises(ValueError):
        encode_cursor(("book", 1), [TS])  # type: ignore[arg-type]


def refused_cursor(raw: str, scope: tuple[str, ...] = TRADES, shape: tuple[type, ...] = (int, int)) -> str:
    err = refused(decode_cursor, raw, scope, shape)
    assert err.parameter == "cursor"
    message = str(err)
    assert len(message) < 400
    return message


@pytest.mark.parametrize("raw", [
    "",
    "A",  # a length base64 cannot have
    "abc=",  # padding is never issued
    "ab+/",  # not the URL-safe alphabet
    "ab cd",
    "é" * 8,
    "%5B%5D",
    b64(b"hello"),
    b64(b"\xff\xfe"),
    b64(b""),
    b64(b"{}"),
    b64(b"[]"),
    b64(b"null"),
    b64(b"[1,2]"),
    b64(b"[\"trades\",[1]]"),
    b64(b"[[\"trades\"],[1],3]"),
    b64(b"[[1],[1]]"),
    b64(b"[" * 300),
    b64(b"NaN"),
    b64(b"1e400"),
])
def test_cursor_refuses_what_is_not_a_cursor(raw: str) -> None:
    assert "not one this API issued" in refused_cursor(raw)


def test_cursor_refuses_an_oversized_value_without_echo() -> None:
    raw = "A" * (MAX_CURSOR_CHARS + 1)
    message = refused_cursor(raw)
    assert "at most 512" in message
    assert "AAAAAAAAAA" not in message
    assert "AAAAAAAAAA" not in refused_cursor("A" * 100_000)


def test_cursor_refuses_another_query() -> None:
    cursor = encode_cursor(TRADES, [TS, 5])
    for scope in [("trades", "binance", "spot", "ETHUSDT"), ("trades", "binance", "usdm", "BTCUSDT"),
                  ("trades", "bybit", "spot", "BTCUSDT"), ("book", "binance", "spot", "BTCUSDT"),
                  ("trades", "binance", "spot"), TRADES + ("x",)]:
        message = refused_cursor(cursor, scope)
        assert message.startswith(
            "cursor belongs to another query: it was issued for trades of binance/spot/BTCUSDT; "
            "pass it only with the same symbol, exchange and market")


def test_cursor_from_another_query_names_only_sane_scopes() -> None:
    for scope in (["\u202e" * 60], ["a" * 200, "b"], [], ["trades", "bin ance"], ["x"] * 9):
        message = refused_cursor(forged(scope, [TS, 1]))
        assert "it was issued for another query" in message
    assert "issued for book;" in refused_cursor(forged(["book"], [TS, 1]))


@pytest.mark.parametrize(("position", "shape"), [
    ([TS], (int, int)),
    ([TS, 1, 2], (int, int)),
    ([], (int, int)),
    ([TS, "5"], (int, int)),
    ([str(TS), 5], (int, int)),
    ([TS, 5], (int, str)),
    ([TS, True], (int, int)),
    ([True], (int,)),
    ([TS, 1.0], (int, int)),
    ([float(TS)], (int,)),
    ([TS, None], (int, int)),
    ([TS, [5]], (int, int)),
    ([TS, {"id": 5}], (int, int)),
    ([TS, 2**64 - 1], (int, int)),
    ([TS, 2**63], (int, int)),
    ([TS, -(2**63) - 1], (int, int)),
    ([TS, 2**70], (int, int)),
    ([2**64 - 1], (int,)),
])
def test_cursor_refuses_a_position_of_the_wrong_shape(position: list[Any], shape: tuple[type, ...]) -> None:
    scope = BOOK
    message = refused_cursor(forged(list(scope), position), scope, shape)
    assert message.startswith("cursor does not hold a position of this query")


@pytest.mark.parametrize("ts", [0, -1, 1, TIME_MIN_NS - 1, TIME_MAX_NS + 1, 2**63 - 1, -(2**63)])
def test_cursor_refuses_a_time_out_of_bounds(ts: int) -> None:
    assert refused_cursor(forged(list(BOOK), [ts]), BOOK, (int,)).startswith("cursor holds a time outside")
    assert refused_cursor(forged(list(TRADES), [ts, 1]), TRADES, (int, int)).startswith("cursor holds a time")


def test_cursor_time_index_can_point_elsewhere_or_nowhere() -> None:
    cursor = encode_cursor(BYBIT, ["id-1", TS])
    assert decode_cursor(cursor, BYBIT, (str, int), time_index=1) == ["id-1", TS]
    assert decode_cursor(encode_cursor(BOOK, [0]), BOOK, (int,), time_index=None) == [0]
    with pytest.raises(QueryError):
        decode_cursor(encode_cursor(BOOK, [0]), BOOK, (int,))


def test_cursor_refuses_a_non_canonical_encoding() -> None:
    # Same content, written differently: whitespace in the JSON.
    spaced = b64(b'[["trades", "binance", "spot", "BTCUSDT"], [1767225600123000000, 5]]')
    assert "canonical" in refused_cursor(spaced)
    # Same bytes, but unused low bits set in the last base64 character.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for trade_id in (1, 10, 100, 1000):
        cursor = encode_cursor(TRADES, [TS, trade_id])
        if len(cursor) % 4:
            break
    assert len(cursor) % 4
    decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    variants = [cursor[:-1] + c for c in alphabet
                if c != cursor[-1]
                and base64.urlsafe_b64decode(cursor[:-1] + c + "=" * (-len(cursor) % 4)) == decoded]
    assert variants
    for variant in variants:
        assert "canonical" in refused_cursor(variant)


def test_cursor_padding_is_refused() -> None:
    cursor = encode_cursor(TRADES, [TS, 1])
    padded = cursor + "=" * (-len(cursor) % 4)
    if padded != cursor:
        refused_cursor(padded)


def test_cursor_with_a_bad_shape_argument_is_a_bug() -> None:
    with pytest.raises(TypeError):
        decode_cursor(encode_cursor(BOOK, [TS]), BOOK, (float,))


# --- properties: nothing but QueryError escapes, whatever arrives --------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=64))
def test_parsers_raise_only_query_errors(raw: str) -> None:
    parsers: list[Callable[[str], object]] = [
        lambda r: parse_time("start", r),
        parse_window,
        lambda r: parse_limit(r, default=1, maximum=10_000),
        parse_symbol,
        parse_exchange,
        parse_market,
        lambda r: decode_cursor(r, TRADES, (int, int)),
        lambda r: decode_cursor(r, BYBIT, (int, str)),
    ]
    for parse in parsers:
        try:
            parse(raw)
        except QueryError as err:
            assert err.parameter is not None
            assert len(str(err)) < 600


@settings(max_examples=200, deadline=None)
@given(st.integers(TIME_MIN_NS, TIME_MAX_NS), st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=64)))
def test_cursor_round_trip_property(ts: int, key: int | str) -> None:
    shape: tuple[type, ...] = (int, type(key))
    assert decode_cursor(encode_cursor(TRADES, [ts, key]), TRADES, shape) == [ts, key]


@settings(max_examples=200, deadline=None)
@given(st.integers(946_684_800_000, 4_102_444_800_000))
def test_epoch_ms_round_trip_property(ms: int) -> None:
    assert parse_time("start", str(ms)) == ms * MS
