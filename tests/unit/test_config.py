"""Configuration: defaults, environment, symbols.yaml, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from wadm.config import load_settings
from wadm.errors import ConfigError
from wadm.records import Market, Venue


def test_defaults_are_the_deployment_spec(tmp_path: Path) -> None:
    s = load_settings({}, cwd=tmp_path)
    assert s.collectors_enabled is True
    assert s.collectors_start_delay == 5
    assert s.collectors_restart_on_error is True
    assert s.symbols(Venue.BINANCE, Market.SPOT) == ("BTCUSDT", "ETHUSDT", "XRPUSDT")
    assert s.symbols(Venue.BYBIT, Market.LINEAR) == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert s.symbols(Venue.BINANCE, Market.USDM) == ("BTCUSDT",)
    assert s.symbols(Venue.BYBIT, Market.SPOT) == ("BTCUSDT",)
    assert (s.retention_raw_trades, s.retention_aggregates_1m, s.retention_aggregates_1h) == (3600, 86400, 604800)
    assert (s.host, s.port, s.stale_after, s.mongodb_uri) == ("0.0.0.0", 8920, 60, "")


def test_environment_overrides(tmp_path: Path) -> None:
    s = load_settings(
        {
            "COLLECTORS_ENABLED": "false",
            "COLLECTORS_START_DELAY": "0.5",
            "COLLECTORS_RESTART_ON_ERROR": "no",
            "BINANCE_SYMBOLS": "btcusdt, solusdt",
            "BINANCE_USDM_SYMBOLS": "",
            "RETENTION_RAW_TRADES": "7200",
            "WADM_PORT": "9000",
            "WADM_STALE_AFTER": "5",
            "WADM_BINANCE_SPOT_WS_URL": "ws://127.0.0.1:9443/binance/spot/",
            "MONGODB_URI": "mongodb://user:secret@db:27017",
        },
        cwd=tmp_path,
    )
    assert not s.collectors_enabled and not s.collectors_restart_on_error
    assert s.collectors_start_delay == 0.5
    assert s.symbols(Venue.BINANCE, Market.SPOT) == ("BTCUSDT", "SOLUSDT")
    assert s.symbols(Venue.BINANCE, Market.USDM) == ()  # an empty list switches a market off
    assert s.retention_raw_trades == 7200 and s.port == 9000 and s.stale_after == 5
    assert s.binance_spot_ws_url == "ws://127.0.0.1:9443/binance/spot"
    assert "secret" not in str(s.as_dict())


def test_symbols_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "symbols.yaml").write_text("binance:\n  spot: [ADAUSDT]\nbybit:\n  linear: []\n")
    s = load_settings({}, cwd=tmp_path)
    assert s.symbols(Venue.BINANCE, Market.SPOT) == ("ADAUSDT",)
    assert s.symbols(Venue.BYBIT, Market.LINEAR) == ()
    assert s.symbols(Venue.BINANCE, Market.USDM) == ("BTCUSDT",)  # not named in the file: default kept
    # An explicit environment variable wins over the file.
    assert load_settings({"BINANCE_SYMBOLS": "DOGEUSDT"}, cwd=tmp_path).symbols(Venue.BINANCE, Market.SPOT) == (
        "DOGEUSDT",
    )


@pytest.mark.parametrize(
    ("env", "name", "allowed"),
    [
        ({"COLLECTORS_ENABLED": "maybe"}, "COLLECTORS_ENABLED", "boolean"),
        ({"COLLECTORS_START_DELAY": "-1"}, "COLLECTORS_START_DELAY", "between 0 and 3600"),
        ({"WADM_PORT": "http"}, "WADM_PORT", "integer"),
        ({"WADM_PORT": "70000"}, "WADM_PORT", "between 0 and 65535"),
        ({"RETENTION_RAW_TRADES": "1.5"}, "RETENTION_RAW_TRADES", "integer"),
        ({"WADM_STALE_AFTER": "nan"}, "WADM_STALE_AFTER", "number"),
        ({"BINANCE_SYMBOLS": "BTC/USDT"}, "BINANCE_SYMBOLS", "letters or digits"),
        ({"MONGODB_URI": "postgres://x"}, "MONGODB_URI", "mongodb://"),
        ({"WADM_BYBIT_WS_URL": "https://stream.bybit.com"}, "WADM_BYBIT_WS_URL", "ws://"),
        ({"WADM_BINANCE_TRADE_STREAM": "bookTicker"}, "WADM_BINANCE_TRADE_STREAM", "aggTrade, trade"),
        ({"WADM_SYMBOLS_FILE": "/nonexistent/symbols.yaml"}, "WADM_SYMBOLS_FILE", "existing YAML file"),
        ({"WADM_RECONNECT_MIN_DELAY": "5", "WADM_RECONNECT_MAX_DELAY": "1"}, "WADM_RECONNECT_MAX_DELAY", "at least"),
        ({"BOOK_DEPTH": "10000"}, "BOOK_DEPTH", "between 5 and 5000"),
        ({"BYBIT_BOOK_DEPTH": "500"}, "BYBIT_BOOK_DEPTH", "one of 1, 50, 200, 1000"),
        ({"BOOK_SNAPSHOT_INTERVAL": "0"}, "BOOK_SNAPSHOT_INTERVAL", "between 0.1 and 3600"),
        ({"BOOK_SNAPSHOT_DEPTH": "many"}, "BOOK_SNAPSHOT_DEPTH", "integer"),
        ({"RETENTION_BOOK_SNAPSHOTS": "5"}, "RETENTION_BOOK_SNAPSHOTS", "between 60"),
        ({"WADM_CHANNELS": "trades,news"}, "WADM_CHANNELS", "trades, book, klines"),
        ({"WADM_BACKFILL_DEADLINE": "0"}, "WADM_BACKFILL_DEADLINE", "between 1 and 86400"),
        ({"BOOK_DEPTH": "50", "BOOK_SNAPSHOT_DEPTH": "60"}, "BOOK_SNAPSHOT_DEPTH", "at most BOOK_DEPTH (50)"),
        ({"BOOK_DEPTH": "300", "BOOK_SNAPSHOT_DEPTH": "200"}, "BOOK_SNAPSHOT_DEPTH", "USD-M snapshots"),
    ],
)
def test_bad_values_name_the_variable_value_and_what_is_allowed(
    tmp_path: Path, env: dict[str, str], name: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env, cwd=tmp_path)
    message = str(info.value)
    assert info.value.name == name
    assert name in message and allowed in message
    value = next(iter(v for k, v in env.items() if k == name))
    assert repr(value) in message


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("kraken:\n  spot: [BTCUSDT]\n", "a venue: binance, bybit"),
        ("binance:\n  linear: [BTCUSDT]\n", "a market of binance: spot, usdm"),
        ("binance:\n  spot: [BTC-USDT]\n", "letters or digits"),
        ("binance: [BTCUSDT]\n", "mapping of market"),
        ("binance: {spot: [x]\n", "readable YAML"),
    ],
)
def test_bad_symbols_file_names_the_key(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=fragment):
        load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings({}, cwd=tmp_path)
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_book_and_channel_settings_are_read(tmp_path: Path) -> None:
    s = load_settings({"BOOK_DEPTH": "5000", "BYBIT_BOOK_DEPTH": "50", "BOOK_SNAPSHOT_INTERVAL": "0.5",
                       "BOOK_SNAPSHOT_DEPTH": "20", "RETENTION_BOOK_SNAPSHOTS": "7200",
                       "WADM_CHANNELS": " book , trades,book"}, cwd=tmp_path)
    assert (s.book_depth, s.bybit_book_depth, s.book_snapshot_interval, s.book_snapshot_depth) == (5000, 50, 0.5, 20)
    assert s.channels == ("book", "trades")
    assert s.retention()["book_snapshots"] == 7200
    defaults = load_settings({}, cwd=tmp_path)
    assert defaults.channels == ("trades", "book", "klines") and defaults.book_depth == 1000
    assert defaults.retention() == {"trades": 3600, "book_snapshots": 3600, "klines": 86400, "gaps": 604800}
