"""Configuration: defaults, environment, symbols.yaml, and clear errors for bad values."""

from __future__ import annotations

from decimal import Decimal
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
    assert (s.host, s.port, s.stale_after, s.mongodb_uri) == ("127.0.0.1", 8920, 60, ""), "safe by default"


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
        ({"WADM_HOST": "example.com"}, "WADM_HOST", "IPv4 or IPv6 address"),
        ({"WADM_HOST": "1.2.3"}, "WADM_HOST", "IPv4 or IPv6 address"),
        ({"WADM_HOST": "0.0.0.0:80"}, "WADM_HOST", "IPv4 or IPv6 address"),
        ({"WADM_HOST": "[::1]"}, "WADM_HOST", "IPv4 or IPv6 address"),
        ({"WADM_HOST": "１２７.0.0.1"}, "WADM_HOST", "IPv4 or IPv6 address"),
        ({"BINANCE_SYMBOLS": "btc usdt"}, "BINANCE_SYMBOLS", "separated by commas, not spaces"),
        ({"BYBIT_SYMBOLS": "BTCUSDT\tETHUSDT"}, "BYBIT_SYMBOLS", "separated by commas, not spaces"),
        ({"BINANCE_SYMBOLS": "btcuſdt"}, "BINANCE_SYMBOLS", "2-20 ASCII letters or digits"),  # 'ſ'.upper() == 'S'
        ({"BINANCE_SYMBOLS": "ıcpusdt"}, "BINANCE_SYMBOLS", "2-20 ASCII letters or digits"),  # 'ı'.upper() == 'I'
        ({"BYBIT_SPOT_SYMBOLS": "B"}, "BYBIT_SPOT_SYMBOLS", "2-20 ASCII letters or digits"),
        ({"BINANCE_USDM_SYMBOLS": "A" * 21}, "BINANCE_USDM_SYMBOLS", "2-20 ASCII letters or digits"),
        ({"WADM_PORT": "８０８０"}, "WADM_PORT", "integer between 0 and 65535"),
        ({"COLLECTORS_START_DELAY": "٣"}, "COLLECTORS_START_DELAY", "number between 0 and 3600"),
        ({"WADM_FLUSH_INTERVAL": "inf"}, "WADM_FLUSH_INTERVAL", "number between 0.05 and 3600"),
        ({"WADM_RECONNECT_MAX_DELAY": "-nan"}, "WADM_RECONNECT_MAX_DELAY", "number between 0.01 and 3600"),
        ({"WADM_BUFFER_MAX_ROWS": "9" * 5000}, "WADM_BUFFER_MAX_ROWS", "integer"),
        ({"WADM_BYBIT_REST_URL": "https://api.bybit.com:99999"}, "WADM_BYBIT_REST_URL", "a valid port"),
        ({"WADM_BINANCE_SPOT_WS_URL": "ws://[::1:9443"}, "WADM_BINANCE_SPOT_WS_URL", "a valid port"),
        ({"WADM_BINANCE_USDM_WS_URL": "wss://:443"}, "WADM_BINANCE_USDM_WS_URL", "and a host"),
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
        ("binance:\n  spot: false\n", "expected a list of symbols"),  # no longer read as an empty list
        ("binance:\n  spot: [BTCUSDT]\nsince: 2025-02-30\n", "readable YAML"),  # a date that does not exist
        ("[" * 5000 + "]" * 5000 + "\n", "readable YAML"),  # nested too deeply for the parser
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
    assert defaults.retention() == {"trades": 3600, "book_snapshots": 3600, "klines": 86400, "gaps": 604800,
                                    "bars_1m": 86400, "bars_1h": 604800, "indicators": 604800}


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "192.168.1.20", "fe80::1%eth0"])
def test_host_is_an_ip_address(tmp_path: Path, host: str) -> None:
    assert load_settings({"WADM_HOST": host}, cwd=tmp_path).host == host
    assert load_settings({"WADM_HOST": ""}, cwd=tmp_path).host == "127.0.0.1"  # unset: the default
    assert load_settings({"WADM_HOST": "localhost"}, cwd=tmp_path).host == "127.0.0.1"


def test_symbols_are_separated_by_commas_only(tmp_path: Path) -> None:
    # NOTE: space-separated lists ("BTCUSDT ETHUSDT") were accepted before; a space is now an error.
    s = load_settings(
        {
            "BINANCE_SYMBOLS": " btcusdt , ETHUSDT ",
            "BINANCE_USDM_SYMBOLS": "BTCUSDT,,ETHUSDT,",  # empty items are skipped
            "BYBIT_SYMBOLS": "BTCUSDT,btcusdt",  # repeated symbols are kept once
            "BYBIT_SPOT_SYMBOLS": "A1," + "Z" * 20,  # 2 and 20 characters
        },
        cwd=tmp_path,
    )
    assert s.symbols(Venue.BINANCE, Market.SPOT) == ("BTCUSDT", "ETHUSDT")
    assert s.symbols(Venue.BINANCE, Market.USDM) == ("BTCUSDT", "ETHUSDT")
    assert s.symbols(Venue.BYBIT, Market.LINEAR) == ("BTCUSDT",)
    assert s.symbols(Venue.BYBIT, Market.SPOT) == ("A1", "Z" * 20)


@pytest.mark.parametrize(
    ("raw", "item"),
    [
        ("BTCUSDT ETHUSDT", "BTCUSDT ETHUSDT"),
        (" BTCUSDT , ETH USDT ", "ETH USDT"),
        ("BTCUSDT,ETH\u00a0USDT", "ETH\u00a0USDT"),
        ("BTCUSDT\nETHUSDT", "BTCUSDT\nETHUSDT"),
    ],
)
def test_whitespace_inside_a_symbol_names_the_item(tmp_path: Path, raw: str, item: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"BINANCE_SYMBOLS": raw}, cwd=tmp_path)
    assert info.value.name == "BINANCE_SYMBOLS" and info.value.value == item
    assert repr(item) in str(info.value) and "separated by commas" in str(info.value)


@pytest.mark.parametrize(
    ("yaml_text", "item"),
    [
        ('binance:\n  spot: [BTCUSDT, "ETH USDT"]\n', "ETH USDT"),
        ("binance:\n  spot:\n    - BTCUSDT\n    - ' ETHUSDT'\n", " ETHUSDT"),
        ("binance:\n  spot: BTCUSDT ETHUSDT\n", "BTCUSDT ETHUSDT"),  # a string: commas only, as in the environment
        ("binance:\n  spot: [btcuſdt]\n", "btcuſdt"),
        ("binance:\n  spot: [" + "A" * 21 + "]\n", "A" * 21),
    ],
)
def test_bad_symbol_in_the_file_names_the_key_and_item(tmp_path: Path, yaml_text: str, item: str) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)
    assert info.value.name == f"{path}: binance.spot" and info.value.value == item
    assert repr(item) in str(info.value)


def test_symbols_file_string_is_read_like_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text("binance:\n  spot: btcusdt, ETHUSDT\n  usdm:\n", encoding="utf-8")
    s = load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)
    assert s.symbols(Venue.BINANCE, Market.SPOT) == ("BTCUSDT", "ETHUSDT")
    assert s.symbols(Venue.BINANCE, Market.USDM) == ()  # `usdm:` with nothing: none


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"binance:\n  spot: [BTCUSDT]\n# caf\xe9\n", 3),  # Latin-1
        ("binance:\n  spot: [BTCUSDT]\n".encode("utf-16"), 1),
    ],
)
def test_symbols_file_that_is_not_utf8(tmp_path: Path, data: bytes, line: int) -> None:
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "symbols.yaml"
    path.write_bytes(data)
    for env in ({}, {"WADM_SYMBOLS_FILE": str(path)}):  # the default path and an explicit one
        with pytest.raises(ConfigError) as info:
            load_settings(env, cwd=tmp_path)
        assert info.value.name == "WADM_SYMBOLS_FILE" and info.value.value == str(path)
        assert "UTF-8" in str(info.value) and f"line {line}" in str(info.value)


@pytest.mark.parametrize(
    ("yaml_text", "key", "line", "first_line"),
    [
        ("binance:\n  spot: [BTCUSDT]\nbinance:\n  usdm: [BTCUSDT]\n", "binance", 3, 1),
        ("bybit:\n  spot: [BTCUSDT]\n  linear: [ETHUSDT]\n  spot: [SOLUSDT]\n", "spot", 4, 2),
        ("bybit: {linear: [BTCUSDT], linear: []}\n", "linear", 1, 1),
        ("binance:\n  spot: [BTCUSDT]\nnotes: {a: 1, b: {c: 2, c: 3}}\n", "c", 3, 3),  # any level
    ],
)
def test_duplicate_key_in_symbols_file(tmp_path: Path, yaml_text: str, key: str, line: int, first_line: int) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)
    assert info.value.name == f"{path}: {key}" and info.value.value == key
    assert f"line {line} repeats line {first_line}" in str(info.value)


def test_same_market_twice_under_another_spelling(tmp_path: Path) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text("binance:\n  spot: [BTCUSDT]\nBinance:\n  SPOT: [ETHUSDT]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)
    assert info.value.name == f"{path}: Binance.SPOT"
    assert "already given as binance.spot" in str(info.value)
    # Different markets under two spellings of a venue lose nothing: accepted.
    path.write_text("binance:\n  spot: [BTCUSDT]\nBinance:\n  usdm: [ETHUSDT]\n", encoding="utf-8")
    s = load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)
    assert s.symbols(Venue.BINANCE, Market.USDM) == ("ETHUSDT",)


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text(
        "binance: &both\n  spot: [BTCUSDT]\nbybit:\n  <<: *both\n  spot: [SOLUSDT]\n  linear: [ETHUSDT]\n",
        encoding="utf-8",
    )
    s = load_settings({"WADM_SYMBOLS_FILE": str(path)}, cwd=tmp_path)
    assert s.symbols(Venue.BYBIT, Market.SPOT) == ("SOLUSDT",)
    assert s.symbols(Venue.BYBIT, Market.LINEAR) == ("ETHUSDT",)


EVERY_SYMBOL_VARIABLE = ("BINANCE_SYMBOLS", "BINANCE_USDM_SYMBOLS", "BYBIT_SYMBOLS", "BYBIT_SPOT_SYMBOLS")


@pytest.mark.parametrize("empty", ["", " ", ",", " , ,"])
def test_no_symbols_at_all_is_refused(tmp_path: Path, empty: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(dict.fromkeys(EVERY_SYMBOL_VARIABLE, empty), cwd=tmp_path)
    message = str(info.value)
    assert all(name in info.value.name for name in EVERY_SYMBOL_VARIABLE)
    assert str(tmp_path / "config" / "symbols.yaml") in message and "never be healthy" in message
    assert info.value.value == dict.fromkeys(EVERY_SYMBOL_VARIABLE, empty)
    # One symbol anywhere is enough.
    s = load_settings({**dict.fromkeys(EVERY_SYMBOL_VARIABLE, empty), "BYBIT_SPOT_SYMBOLS": "ETHUSDT"}, cwd=tmp_path)
    assert [(t.venue, t.market, t.symbols) for t in s.targets] == [(Venue.BYBIT, Market.SPOT, ("ETHUSDT",))]


def test_no_symbols_from_file_and_environment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "symbols.yaml"
    path.write_text("binance:\n  spot: []\n  usdm:\nbybit:\n  linear: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SYMBOLS_FILE": str(path), "BYBIT_SPOT_SYMBOLS": ""}, cwd=tmp_path)
    assert all(name in info.value.name for name in EVERY_SYMBOL_VARIABLE)
    assert str(path) in str(info.value)
    assert info.value.value == {
        "BINANCE_SYMBOLS": f"none in {path}",
        "BINANCE_USDM_SYMBOLS": f"none in {path}",
        "BYBIT_SYMBOLS": f"none in {path}",
        "BYBIT_SPOT_SYMBOLS": "",
    }


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    other = tmp_path / "other"
    other.write_text("not a folder")
    for env, value in (
        ({}, "data"),  # the default, relative to cwd
        ({"WADM_DATA_DIR": str(other)}, str(other)),
        ({"WADM_DATA_DIR": str(other / "store")}, str(other / "store")),  # could never be created
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(env, cwd=tmp_path)
        assert info.value.name == "WADM_DATA_DIR" and info.value.value == value
        assert repr(value) in str(info.value) and "is a file" in str(info.value)
    # With MongoDB the folder holds the spool: it is checked too, unless the spool is off.
    with pytest.raises(ConfigError, match="the embedded store and the spool"):
        load_settings({"MONGODB_URI": "mongodb://db:27017"}, cwd=tmp_path)
    assert load_settings({"MONGODB_URI": "mongodb://db:27017", "WADM_SPOOL_MAX_BYTES": "0"},
                         cwd=tmp_path).spool_max_bytes == 0
    # Folders, existing or not, are fine.
    (tmp_path / "store").mkdir()
    assert load_settings({"WADM_DATA_DIR": "store"}, cwd=tmp_path).data_dir == Path("store")
    assert load_settings({"WADM_DATA_DIR": "new/store"}, cwd=tmp_path).data_dir == Path("new/store")
    assert load_settings({"MONGODB_URI": "mongodb://db:27017", "WADM_DATA_DIR": "store"},
                         cwd=tmp_path).data_dir == Path("store")


@pytest.mark.parametrize(("raw", "size"), [
    ("0", 0), ("1048576", 1024**2), ("512M", 512 * 1024**2), ("4G", 4 * 1024**3), ("4GiB", 4 * 1024**3),
    ("1.5g", int(1.5 * 1024**3)), (" 2 GB ", 2 * 1024**3), ("1024k", 1024**2),
])
def test_spool_sizes(raw: str, size: int, tmp_path: Path) -> None:
    assert load_settings({"WADM_SPOOL_MAX_BYTES": raw}, cwd=tmp_path).spool_max_bytes == size


@pytest.mark.parametrize("raw", ["-1", "4X", "G", "lots", "4 G B", "１G", "1e9"])
def test_bad_spool_sizes_are_refused(raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SPOOL_MAX_BYTES": raw}, cwd=tmp_path)
    assert info.value.name == "WADM_SPOOL_MAX_BYTES" and "512M or 4G" in str(info.value)


def test_a_spool_smaller_than_a_megabyte_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SPOOL_MAX_BYTES": "100k"}, cwd=tmp_path)
    assert info.value.name == "WADM_SPOOL_MAX_BYTES" and "at least 1M" in str(info.value)


def test_paths_that_cannot_be_looked_up(tmp_path: Path) -> None:
    too_long = str(tmp_path / ("a" * 300))  # a name longer than any file system allows
    for name in ("WADM_SYMBOLS_FILE", "WADM_DATA_DIR"):
        with pytest.raises(ConfigError) as info:
            load_settings({name: too_long}, cwd=tmp_path)
        assert info.value.name == name and info.value.value == too_long


def test_symbols_file_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_SYMBOLS_FILE": str(tmp_path)}, cwd=tmp_path)
    assert info.value.name == "WADM_SYMBOLS_FILE" and "readable YAML file" in str(info.value)


def test_reconnect_min_delay_above_the_default_max(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_RECONNECT_MIN_DELAY": "100"}, cwd=tmp_path)
    assert info.value.name == "WADM_RECONNECT_MAX_DELAY" and info.value.value == "60"
    assert "at least WADM_RECONNECT_MIN_DELAY (100)" in str(info.value)


def test_valid_numbers_and_urls_are_read_as_before(tmp_path: Path) -> None:
    s = load_settings({"WADM_PORT": "0", "WADM_FLUSH_ROWS": "1_000", "WADM_STALE_AFTER": "1e2",
                       "WADM_BYBIT_WS_URL": "ws://[::1]:9443/", "WADM_BYBIT_REST_URL": "http://127.0.0.1:8080"},
                      cwd=tmp_path)
    assert (s.port, s.flush_rows, s.stale_after) == (0, 1000, 100.0)
    assert (s.bybit_ws_url, s.bybit_rest_url) == ("ws://[::1]:9443", "http://127.0.0.1:8080")


def test_footprint_rows_from_the_environment_and_the_symbols_file(tmp_path: Path) -> None:
    assert load_settings({}, cwd=tmp_path).footprint_row("BTCUSDT") is None, "no row: the derived default"
    s = load_settings({"FOOTPRINT_ROW": "btcusdt:10, ETHUSDT=0.50"}, cwd=tmp_path)
    assert s.footprint_row("BTCUSDT") == Decimal("10") and s.footprint_row("ETHUSDT") == Decimal("0.5")
    assert s.as_dict()["footprint_rows"] == {"BTCUSDT": "10", "ETHUSDT": "0.5"}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "symbols.yaml").write_text(
        "binance:\n  spot: [BTCUSDT, XRPUSDT]\nfootprint_row:\n  XRPUSDT: 0.00001\n  BTCUSDT: 25\n")
    s = load_settings({}, cwd=tmp_path)
    assert s.footprint_row("XRPUSDT") == Decimal("0.00001") and s.footprint_row("BTCUSDT") == Decimal("25")
    s = load_settings({"FOOTPRINT_ROW": "BTCUSDT:5"}, cwd=tmp_path)
    assert s.footprint_row("BTCUSDT") == Decimal("5") and s.footprint_row("XRPUSDT") is None, "the variable wins"
    s = load_settings({"FOOTPRINT_ROW": " "}, cwd=tmp_path)
    assert s.footprint_row("BTCUSDT") == Decimal("25"), "empty (a compose file's unset variable) keeps the file's rows"


@pytest.mark.parametrize(("raw", "fragment"), [
    ("BTCUSDT", "SYMBOL:row pairs"),
    ("10", "SYMBOL:row pairs"),
    ("BTCUSDT:0", "positive decimal"),
    ("BTCUSDT:-5", "positive decimal"),
    ("BTCUSDT:nan", "positive decimal"),
    ("BTCUSDT:0.0000000000001", "at most 12 decimals"),
    ("BTCUSDT:10,BTCUSDT:20", "each symbol once"),
    ("BTC USDT:10", "2-20 ASCII letters"),
    ("DOGEUSDT:1", "a collected symbol"),
])
def test_bad_footprint_rows_are_refused_with_what_is_allowed(tmp_path: Path, raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"FOOTPRINT_ROW": raw}, cwd=tmp_path)
    assert "FOOTPRINT_ROW" in str(err.value) and fragment in str(err.value)


def test_a_bad_footprint_row_in_the_symbols_file_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "symbols.yaml").write_text("footprint_row:\n  BTCUSDT: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        load_settings({}, cwd=tmp_path)
    assert "footprint_row: BTCUSDT" in str(err.value) and "row height" in str(err.value)


KEY_A, KEY_B = "a" * 16 + "-key-one", "0123456789abcdef0123"


def test_api_keys_from_the_variable_or_a_file_never_printed(tmp_path: Path) -> None:
    assert load_settings({}, cwd=tmp_path).api_keys == ()
    s = load_settings({"WADM_API_KEYS": f" {KEY_A}, {KEY_B},{KEY_A}"}, cwd=tmp_path)
    assert s.api_keys == (KEY_A, KEY_B)
    assert KEY_A not in repr(s) and KEY_A not in str(s.as_dict()) and s.as_dict()["api_keys"] == "2 set (hidden)"
    (tmp_path / "keys").write_text(f"# the laptop\n{KEY_B}\n\n  # old: {KEY_A}\n")
    assert load_settings({"WADM_API_KEYS_FILE": "keys"}, cwd=tmp_path).api_keys == (KEY_B,)
    # any visible ASCII but the comma, short ones too (the service warns about those at start)
    assert load_settings({"WADM_API_KEYS": "secret, p@ss!w0rd#:;"}, cwd=tmp_path).api_keys == ("secret", "p@ss!w0rd#:;")


@pytest.mark.parametrize(("env", "name", "fragment"), [
    ({"WADM_API_KEYS": "k" * 257}, "WADM_API_KEYS", "1 to 256 visible ASCII characters"),
    ({"WADM_API_KEYS": KEY_A + ",#not-a-comment-here"}, "WADM_API_KEYS", "not starting with #"),
    ({"WADM_API_KEYS": "pa$$word-0123456789"}, "WADM_API_KEYS", "or $"),
    ({"WADM_API_KEYS": KEY_A + ",has space in it 1234"}, "WADM_API_KEYS", "key 2 (hidden"),
    ({"WADM_API_KEYS": KEY_A, "WADM_API_KEYS_FILE": "keys"}, "WADM_API_KEYS", "not both"),
    ({"WADM_API_KEYS_FILE": "missing"}, "WADM_API_KEYS_FILE", "a readable UTF-8 file"),
    ({"WADM_RATE_LIMIT": "-1"}, "WADM_RATE_LIMIT", "0"),
    ({"WADM_RATE_BURST": "0"}, "WADM_RATE_BURST", "1"),
])
def test_bad_api_keys_and_rate_limits_are_refused_without_showing_a_key(
        tmp_path: Path, env: dict[str, str], name: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env, cwd=tmp_path)
    message = str(err.value)
    assert name in message and fragment in message, message
    assert "has space" not in message and KEY_A not in message


@pytest.mark.parametrize(("name", "raw", "attr", "value"), [
    ("WADM_ALERT_AFTER", "2m", "alert_after", 120.0),
    ("WADM_ALERT_REPEAT", " 1h ", "alert_repeat", 3600.0),
    ("WADM_STALE_AFTER", "90s", "stale_after", 90.0),
    ("RETENTION_AGGREGATES_1H", "7d", "retention_aggregates_1h", 7 * 86400),
    ("RETENTION_RAW_TRADES", "1.5h", "retention_raw_trades", 5400),
    ("WADM_FLUSH_INTERVAL", "0.5S", "flush_interval", 0.5),
    ("WADM_ALERT_AFTER", "45", "alert_after", 45.0),
])
def test_durations_in_seconds_or_with_a_unit(tmp_path: Path, name: str, raw: str, attr: str, value: float) -> None:
    assert getattr(load_settings({name: raw}, cwd=tmp_path), attr) == value


@pytest.mark.parametrize(("name", "raw"), [
    ("WADM_ALERT_AFTER", "2x"), ("WADM_ALERT_AFTER", "2 minutes"), ("RETENTION_RAW_TRADES", "1.5s"),
    ("WADM_ALERT_AFTER", "2d"), ("WADM_PORT", "8m"),
])
def test_bad_durations_are_refused_naming_the_units(tmp_path: Path, name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: raw}, cwd=tmp_path)
    assert info.value.name == name
    if name != "WADM_PORT":
        assert "with s, m, h or d" in str(info.value)


def test_a_keys_file_without_a_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("# every line a comment\n#abcdefghijklmnopqrstuvwxyz\n\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"WADM_API_KEYS_FILE": "keys"}, cwd=tmp_path)
    assert info.value.name == "WADM_API_KEYS_FILE" and "would leave the API open" in str(info.value)
    assert "abcdefghij" not in str(info.value)


def test_fractional_durations_of_whole_seconds(tmp_path: Path) -> None:
    assert load_settings({"RETENTION_AGGREGATES_1H": "1.1h"}, cwd=tmp_path).retention_aggregates_1h == 3960
    assert load_settings({"RETENTION_RAW_TRADES": "0.7d"}, cwd=tmp_path).retention_raw_trades == 60480
