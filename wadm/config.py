"""Settings: read once from the environment (and ``config/symbols.yaml``), validated, frozen.

This is the only module that reads environment variables or the symbols file. Every other part
of WADM receives a :class:`Settings` through its constructor. A bad value raises
:class:`~wadm.errors.ConfigError` naming the variable or key, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from wadm.errors import ConfigError
from wadm.records import CHANNELS, USDM_DEPTH_LIMITS, VENUE_MARKETS, Market, Venue

__all__ = ["DEFAULT_SYMBOLS", "Settings", "StreamTarget", "load_settings"]

DEFAULT_SYMBOLS: dict[tuple[Venue, Market], tuple[str, ...]] = {
    (Venue.BINANCE, Market.SPOT): ("BTCUSDT", "ETHUSDT", "XRPUSDT"),
    (Venue.BINANCE, Market.USDM): ("BTCUSDT",),
    (Venue.BYBIT, Market.LINEAR): ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
    (Venue.BYBIT, Market.SPOT): ("BTCUSDT",),
}

# Environment variable that lists the symbols of each (venue, market).
SYMBOL_VARIABLES: dict[tuple[Venue, Market], str] = {
    (Venue.BINANCE, Market.SPOT): "BINANCE_SYMBOLS",
    (Venue.BINANCE, Market.USDM): "BINANCE_USDM_SYMBOLS",
    (Venue.BYBIT, Market.LINEAR): "BYBIT_SYMBOLS",
    (Venue.BYBIT, Market.SPOT): "BYBIT_SPOT_SYMBOLS",
}

DEFAULT_URLS: dict[str, str] = {
    "WADM_BINANCE_SPOT_WS_URL": "wss://stream.binance.com:9443",
    "WADM_BINANCE_SPOT_REST_URL": "https://api.binance.com",
    "WADM_BINANCE_USDM_WS_URL": "wss://fstream.binance.com",
    "WADM_BINANCE_USDM_REST_URL": "https://fapi.binance.com",
    "WADM_BYBIT_WS_URL": "wss://stream.bybit.com",
    "WADM_BYBIT_REST_URL": "https://api.bybit.com",
}

# The REST API's rule too: checked on the ASCII text before upper-casing ('ſ'.upper() == 'S').
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")
SYMBOL_RULE = "a symbol is 2-20 ASCII letters or digits as the venue writes it, e.g. BTCUSDT"
DEFAULT_DATA_DIR = Path("data")
DEFAULT_SPOOL_BYTES = 4 * 1024**3  # a day or two of the default symbols (bench/README.md section 10)
ALERT_FORMATS = ("json", "slack", "discord", "telegram")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
BINANCE_TRADE_STREAMS = ("aggTrade", "trade")
BYBIT_BOOK_DEPTHS = (1, 50, 200, 1000)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamTarget:
    """One (venue, market) and the symbols collected there."""

    venue: Venue
    market: Market
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every setting WADM uses, validated. Build with :func:`load_settings` or directly in tests."""

    collectors_enabled: bool = True
    collectors_start_delay: float = 5.0
    collectors_restart_on_error: bool = True
    targets: tuple[StreamTarget, ...] = field(
        default_factory=lambda: tuple(
            StreamTarget(venue=v, market=m, symbols=s) for (v, m), s in DEFAULT_SYMBOLS.items()
        )
    )
    retention_raw_trades: int = 3600
    retention_aggregates_1m: int = 86400
    retention_aggregates_1h: int = 604800
    retention_gaps: int = 604800
    retention_book_snapshots: int = 3600
    retention_indicators: int = 604800
    channels: tuple[str, ...] = CHANNELS
    book_depth: int = 1000
    bybit_book_depth: int = 200
    book_snapshot_interval: float = 1.0
    book_snapshot_depth: int = 100
    backfill_deadline: float = 600.0
    host: str = "127.0.0.1"  # safe by default: another address is a choice (and wants API keys)
    port: int = 8920
    data_dir: Path = DEFAULT_DATA_DIR
    mongodb_uri: str = ""
    stale_after: float = 60.0
    binance_spot_ws_url: str = DEFAULT_URLS["WADM_BINANCE_SPOT_WS_URL"]
    binance_spot_rest_url: str = DEFAULT_URLS["WADM_BINANCE_SPOT_REST_URL"]
    binance_usdm_ws_url: str = DEFAULT_URLS["WADM_BINANCE_USDM_WS_URL"]
    binance_usdm_rest_url: str = DEFAULT_URLS["WADM_BINANCE_USDM_REST_URL"]
    bybit_ws_url: str = DEFAULT_URLS["WADM_BYBIT_WS_URL"]
    bybit_rest_url: str = DEFAULT_URLS["WADM_BYBIT_REST_URL"]
    binance_trade_stream: str = "aggTrade"
    rotate_after: float = 23 * 3600.0
    flush_rows: int = 20_000
    flush_interval: float = 1.0
    buffer_max_rows: int = 500_000
    writer_max_pending_rows: int = 5_000_000
    spool_max_bytes: int = DEFAULT_SPOOL_BYTES  # the on-disk spool under data_dir/spool (0: no spool)
    # Alerts (wadm.pipeline.alerts): the webhook may carry a token, so it is never printed.
    alert_webhook_url: str = field(default="", repr=False)
    alert_after: float = 120.0  # seconds a condition lasts before it is alerted
    alert_repeat: float = 3600.0  # seconds between reminders of a condition that lasts (0: never)
    alert_format: str = "json"
    alert_telegram_chat_id: str = ""
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 60.0
    log_level: str = "INFO"
    api_concurrency: int = 2  # heavy API requests (store reads, large answers) working at once
    api_queue: int = 32  # heavy API requests waiting for a turn; more are answered 429
    # Keys that /api/v1/* and /metrics require when any is set; never printed or logged.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    rate_limit: float = 20.0  # requests per second per API key (0: none); a burst of rate_burst first
    rate_burst: int = 40
    # Footprint row height per symbol (price units), as configured; other symbols get a row
    # derived from their tick and price (wadm.analytics.grid.default_row).
    footprint_rows: tuple[tuple[str, Decimal], ...] = ()

    def retention(self) -> dict[str, int]:
        """Seconds each table keeps its rows (event time)."""
        return {
            "trades": self.retention_raw_trades,
            "book_snapshots": self.retention_book_snapshots,
            "klines": self.retention_aggregates_1m,
            "gaps": self.retention_gaps,
            "bars_1m": self.retention_aggregates_1m,
            "bars_1h": self.retention_aggregates_1h,
            "indicators": self.retention_indicators,
        }

    def footprint_row(self, symbol: str) -> Decimal | None:
        """The configured footprint row of ``symbol`` (price units), or None for the derived default."""
        return dict(self.footprint_rows).get(symbol)

    def symbols(self, venue: Venue, market: Market) -> tuple[str, ...]:
        """Return the symbols collected on one (venue, market), possibly empty."""
        for t in self.targets:
            if t.venue is venue and t.market is market:
                return t.symbols
        return ()

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-able values (the MongoDB URI's password hidden)."""
        out = asdict(self)
        out["data_dir"] = str(self.data_dir)
        out["targets"] = [
            {"venue": str(t.venue), "market": str(t.market), "symbols": list(t.symbols)}
            for t in self.targets
        ]
        out["mongodb_uri"] = _mask_password(self.mongodb_uri)
        out["footprint_rows"] = {symbol: format(row, "f") for symbol, row in self.footprint_rows}
        out["api_keys"] = f"{len(self.api_keys)} set (hidden)" if self.api_keys else "none"
        out["alert_webhook_url"] = "set (hidden)" if self.alert_webhook_url else "none"
        return out


# Visible ASCII but the comma (the separator), quotes, backslash and $ (shells and compose files
# rewrite them), not starting with # (a comment in a keys file).
_KEY_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",\"'`\\$")
API_KEY_RE = re.compile(f"[{re.escape(_KEY_CHARS.replace('#', ''))}][{re.escape(_KEY_CHARS)}]{{0,255}}")
API_KEY_RULE = ("1 to 256 visible ASCII characters without spaces, commas, quotes, backslashes or $, not starting "
                "with # (16 or more advised, e.g. from: openssl rand -hex 32)")
API_KEY_ADVISED = 16  # shorter keys are accepted with a warning at start


def _api_keys(raw: str | None, path: str | None, cwd: Path) -> tuple[str, ...]:
    """API keys from ``WADM_API_KEYS`` (comma-separated) or ``WADM_API_KEYS_FILE`` (one a line, ``#``
    comments). Errors never show a key."""
    if raw is not None and path is not None and raw.strip() and path.strip():
        raise ConfigError("WADM_API_KEYS", "(hidden)", "set WADM_API_KEYS or WADM_API_KEYS_FILE, not both")
    name, items = "WADM_API_KEYS", [] if raw is None else raw.split(",")
    if path is not None and path.strip():
        name, file = "WADM_API_KEYS_FILE", Path(path) if Path(path).is_absolute() else cwd / path
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(name, path, f"a readable UTF-8 file with one key a line ({exc.__class__.__name__})") \
                from None
        items = [line for line in text.splitlines() if not line.strip().startswith("#")]
    keys: list[str] = []
    for position, item in enumerate((i.strip() for i in items if i.strip()), start=1):
        if not API_KEY_RE.fullmatch(item):
            raise ConfigError(name, f"key {position} (hidden, {len(item)} characters)", API_KEY_RULE)
        if item not in keys:
            keys.append(item)
    if name == "WADM_API_KEYS_FILE" and not keys:
        raise ConfigError(name, path or "", "a file with at least one key (lines starting with # are comments): "
                          "an empty one would leave the API open")
    return tuple(keys)


def _bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(name, raw, "expected a boolean: true/false, 1/0, yes/no, on/off")


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _number(name: str, raw: str, *, minimum: float, maximum: float = math.inf, integer: bool,
            seconds: bool = False) -> Any:
    allowed = f"expected {'an integer' if integer else 'a number'} between {minimum:g} and {maximum:g}"
    if seconds:
        allowed += " (seconds; or with s, m, h or d, e.g. 90s, 2m, 1h)"
    value: float | None = None
    duration = _DURATION_RE.fullmatch(raw.lower()) if seconds and raw.isascii() else None
    if duration is not None:
        value = float(duration.group(1)) * _DURATION_UNITS[duration.group(2)]
        if integer:  # 1.1h is 3960 s, though floats say 3960.0000000000005
            value = round(value) if abs(value - round(value)) < 1e-6 else None
    elif raw.isascii():  # int() and float() also read digits such as '٣' or '８'
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            pass
    # NaN fails every comparison, so it is refused here too.
    if value is None or not (minimum <= value <= maximum) or not math.isfinite(value):
        raise ConfigError(name, raw, allowed)
    return value


MIN_SPOOL_BYTES = 1024 * 1024
_DURATIONS = frozenset({  # settings in seconds: "2m", "1h", "7d" are read too
    "COLLECTORS_START_DELAY", "RETENTION_RAW_TRADES", "RETENTION_AGGREGATES_1M", "RETENTION_AGGREGATES_1H",
    "RETENTION_GAPS", "RETENTION_BOOK_SNAPSHOTS", "RETENTION_INDICATORS", "BOOK_SNAPSHOT_INTERVAL",
    "WADM_BACKFILL_DEADLINE", "WADM_STALE_AFTER", "WADM_ROTATE_AFTER", "WADM_FLUSH_INTERVAL",
    "WADM_RECONNECT_MIN_DELAY", "WADM_RECONNECT_MAX_DELAY", "WADM_ALERT_AFTER", "WADM_ALERT_REPEAT",
})


def _size(name: str, raw: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024, an ``i``/``iB``/``B`` after it allowed)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", raw.strip().lower()) if raw.isascii() else None
    if match is None:
        raise ConfigError(name, raw, "a size in bytes such as 4294967296, 512M or 4G (0 turns the spool off)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip().rstrip("/")
    allowed = f"expected a base URL starting with {' or '.join(s + '://' for s in schemes)}"
    if not re.match(r"^[a-z]+://[^/\s]+", value) or value.split("://", 1)[0] not in schemes:
        raise ConfigError(name, raw, allowed)
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port  # .port raises on a port that is not a number in 0-65535
    except ValueError as exc:  # also a broken [IPv6] literal
        raise ConfigError(name, raw, f"{allowed}, a host and a valid port ({exc})") from None
    if not host:
        raise ConfigError(name, raw, f"{allowed} and a host")
    return value


def _webhook(raw: str) -> str:
    """An http(s) URL kept as given (its path may matter to the receiver); errors do not echo it (a token)."""
    try:
        parts = urlsplit(raw)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in raw):
        raise ConfigError("WADM_ALERT_WEBHOOK_URL", "(hidden: it may hold a token)",
                          "an http:// or https:// URL with a host, such as a Slack, Discord or Telegram webhook")
    return raw


def _symbols(name: str, raw: object) -> tuple[str, ...]:
    """Read a symbol list: a comma-separated string (empty items skipped) or a YAML list of strings."""
    if isinstance(raw, str):
        items = [s for s in (part.strip() for part in raw.split(",")) if s]
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        items = list(raw)
    else:
        raise ConfigError(name, raw, "expected a list of symbols such as BTCUSDT,ETHUSDT")
    out: list[str] = []
    for item in items:
        if any(c.isspace() for c in item):
            raise ConfigError(name, item, f"symbols are separated by commas, not spaces; {SYMBOL_RULE}")
        sym = item.upper()
        if not (item.isascii() and SYMBOL_RE.fullmatch(sym)):
            raise ConfigError(name, item, SYMBOL_RULE)
        if sym not in out:
            out.append(sym)
    return tuple(out)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names one key twice."""

    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(problem=f"duplicate key {key!r} on line {line} (first on line {first_line})")
        self.key = key
        self.line = line
        self.first_line = first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by design
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # SafeLoader itself refuses it below
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKeyError(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_ROW_RULE = ("a row height in price units: a positive decimal number with at most 12 decimals, "
             "such as 10 or 0.5, a multiple of the symbol's tick")
FOOTPRINT_KEY = "footprint_row"


def _row(name: str, raw: object) -> Decimal:
    """One footprint row height: a positive decimal (YAML numbers are read through their text)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ConfigError(name, raw, _ROW_RULE)
    text = str(raw).strip()
    try:
        value = Decimal(text) if text.isascii() else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value <= 0 or value > 10**9 or -value.as_tuple().exponent > 12:  # type: ignore[operator]
        raise ConfigError(name, raw, _ROW_RULE)
    return value.normalize()


def _footprint_rows(name: str, raw: object) -> dict[str, Decimal]:
    """``SYMBOL:row`` pairs (comma-separated text) or a YAML mapping of symbol -> row."""
    pairs: list[tuple[str, object]]
    if isinstance(raw, str):
        pairs = []
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            symbol, sep, text = item.replace("=", ":").partition(":")
            if not sep:
                raise ConfigError(name, item, f"SYMBOL:row pairs separated by commas, e.g. BTCUSDT:10,ETHUSDT:0.5; "
                                              f"{_ROW_RULE}")
            pairs.append((symbol.strip(), text.strip()))
    elif isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items()]
    else:
        raise ConfigError(name, raw, "a mapping of symbol -> row height, e.g. {BTCUSDT: 10, ETHUSDT: 0.5}")
    out: dict[str, Decimal] = {}
    for symbol, row in pairs:
        sym = str(symbol).upper()
        if not (symbol.isascii() and SYMBOL_RE.fullmatch(sym)):
            raise ConfigError(name, symbol, SYMBOL_RULE)
        if sym in out:
            raise ConfigError(name, symbol, "each symbol once")
        out[sym] = _row(f"{name}: {sym}", row)
    return out


def _read_symbols_file(path: Path) -> tuple[dict[tuple[Venue, Market], tuple[str, ...]], dict[str, Decimal]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("WADM_SYMBOLS_FILE", str(path), f"a readable YAML file ({exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.end]
        raise ConfigError("WADM_SYMBOLS_FILE", str(path), f"a UTF-8 text file (line {line} holds {bad!r})") from exc
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except _DuplicateKeyError as exc:
        raise ConfigError(
            f"{path}: {exc.key}", exc.key, f"each key once per mapping; line {exc.line} repeats line {exc.first_line}"
        ) from exc
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a date such as 2025-02-30
        raise ConfigError("WADM_SYMBOLS_FILE", str(path), f"a readable YAML file ({exc})") from exc
    if doc is None:
        return {}, {}
    if not isinstance(doc, dict):
        raise ConfigError(str(path), doc, "a mapping of venue -> market -> list of symbols")
    found: dict[tuple[Venue, Market], tuple[str, ...]] = {}
    given_as: dict[tuple[Venue, Market], str] = {}
    rows: dict[str, Decimal] = {}
    for venue_name, markets in doc.items():
        if venue_name == FOOTPRINT_KEY:
            rows = _footprint_rows(f"{path}: {FOOTPRINT_KEY}", markets or {})
            continue
        try:
            venue = Venue(str(venue_name).lower())
        except ValueError:
            allowed = ", ".join(v.value for v in Venue)
            raise ConfigError(f"{path}: {venue_name}", venue_name, f"a venue: {allowed}, or {FOOTPRINT_KEY}") from None
        if not isinstance(markets, dict):
            raise ConfigError(f"{path}: {venue_name}", markets, "a mapping of market -> list of symbols")
        for market_name, syms in markets.items():
            allowed_markets = VENUE_MARKETS[venue]
            market = next((m for m in allowed_markets if m.value == str(market_name).lower()), None)
            if market is None:
                allowed = ", ".join(m.value for m in allowed_markets)
                raise ConfigError(f"{path}: {venue_name}.{market_name}", market_name, f"a market of {venue}: {allowed}")
            key = f"{venue_name}.{market_name}"
            if (venue, market) in given_as:  # e.g. `binance` and `Binance`: the same market twice
                raise ConfigError(f"{path}: {key}", market_name,
                                  f"each market once; it is already given as {given_as[(venue, market)]}")
            given_as[(venue, market)] = key
            found[(venue, market)] = _symbols(f"{path}: {key}", [] if syms is None else syms)
    return found, rows


def _check_data_dir(data_dir: Path, cwd: Path) -> None:
    """Refuse a store folder that exists as a file, or lies under one (the store could never create it)."""
    full = data_dir if data_dir.is_absolute() else cwd / data_dir
    try:
        for p in (full, *full.parents):
            if p.exists():
                if not p.is_dir():
                    raise ConfigError("WADM_DATA_DIR", str(data_dir),
                                      f"a folder for the embedded store and the spool; {p} is a file")
                return
    except OSError as exc:  # e.g. a folder on the way that we may not read
        raise ConfigError("WADM_DATA_DIR", str(data_dir),
                          f"a folder the embedded store and the spool can use ({exc})") from exc


def _mask_password(uri: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", uri)


def _mongodb_uri(raw: str) -> str:
    """A MongoDB connection string that names at least one host (checked offline: no DNS)."""
    allowed = ("empty (embedded store) or a connection string such as mongodb://user:password@host:27017/ "
               "or mongodb+srv://user:password@cluster.example.com/")
    if not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("MONGODB_URI", _mask_password(raw), allowed)
    if raw.startswith("mongodb+srv://"):
        authority = raw.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        if not authority or ":" in authority or "," in authority:
            raise ConfigError("MONGODB_URI", _mask_password(raw), f"{allowed}; mongodb+srv:// names one host "
                              "without a port")
        return raw
    # The driver's own parser (imported here: only a MongoDB deployment pays for it); it does no
    # network I/O for mongodb:// strings.
    from pymongo import errors as pymongo_errors
    from pymongo import uri_parser

    try:
        nodes = uri_parser.parse_uri(raw)["nodelist"]
    except (ValueError, pymongo_errors.PyMongoError) as exc:
        raise ConfigError("MONGODB_URI", _mask_password(raw), f"{allowed} ({exc})") from None
    if not nodes or any(not host for host, _ in nodes):
        raise ConfigError("MONGODB_URI", _mask_password(raw), f"{allowed}: every host needs a name")
    return raw


def load_settings(env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
    """Read and validate the settings.

    Args:
        env: the environment to read (defaults to ``os.environ``).
        cwd: where a relative ``config/symbols.yaml`` is looked up (defaults to the working directory).

    Raises:
        ConfigError: a value cannot be used; the message names it and what is allowed.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd

    def get(name: str) -> str | None:
        raw = env.get(name)
        return None if raw is None or raw.strip() == "" else raw.strip()

    kw: dict[str, Any] = {}
    for name, attr in (
        ("COLLECTORS_ENABLED", "collectors_enabled"),
        ("COLLECTORS_RESTART_ON_ERROR", "collectors_restart_on_error"),
    ):
        if (raw := get(name)) is not None:
            kw[attr] = _bool(name, raw)
    numbers: tuple[tuple[str, str, float, float, bool], ...] = (
        ("COLLECTORS_START_DELAY", "collectors_start_delay", 0, 3600, False),
        ("RETENTION_RAW_TRADES", "retention_raw_trades", 60, 30 * 86400, True),
        ("RETENTION_AGGREGATES_1M", "retention_aggregates_1m", 60, 365 * 86400, True),
        ("RETENTION_AGGREGATES_1H", "retention_aggregates_1h", 3600, 5 * 365 * 86400, True),
        ("RETENTION_GAPS", "retention_gaps", 3600, 5 * 365 * 86400, True),
        ("RETENTION_BOOK_SNAPSHOTS", "retention_book_snapshots", 60, 365 * 86400, True),
        ("RETENTION_INDICATORS", "retention_indicators", 3600, 5 * 365 * 86400, True),
        ("BOOK_DEPTH", "book_depth", 5, 5000, True),
        ("BOOK_SNAPSHOT_INTERVAL", "book_snapshot_interval", 0.1, 3600, False),
        ("BOOK_SNAPSHOT_DEPTH", "book_snapshot_depth", 1, 1000, True),
        ("WADM_BACKFILL_DEADLINE", "backfill_deadline", 1, 86400, False),
        ("WADM_PORT", "port", 0, 65535, True),
        ("WADM_STALE_AFTER", "stale_after", 1, 86400, False),
        ("WADM_ROTATE_AFTER", "rotate_after", 10, 24 * 3600 - 60, False),
        ("WADM_FLUSH_ROWS", "flush_rows", 1, 10_000_000, True),
        ("WADM_FLUSH_INTERVAL", "flush_interval", 0.05, 3600, False),
        ("WADM_BUFFER_MAX_ROWS", "buffer_max_rows", 1000, 100_000_000, True),
        ("WADM_WRITER_MAX_PENDING_ROWS", "writer_max_pending_rows", 1000, 1_000_000_000, True),
        ("WADM_RECONNECT_MIN_DELAY", "reconnect_min_delay", 0.01, 600, False),
        ("WADM_RECONNECT_MAX_DELAY", "reconnect_max_delay", 0.01, 3600, False),
        ("WADM_API_CONCURRENCY", "api_concurrency", 1, 64, True),
        ("WADM_API_QUEUE", "api_queue", 0, 10_000, True),
        ("WADM_RATE_LIMIT", "rate_limit", 0, 1_000_000, False),
        ("WADM_RATE_BURST", "rate_burst", 1, 1_000_000, True),
        ("WADM_ALERT_AFTER", "alert_after", 1, 86400, False),
        ("WADM_ALERT_REPEAT", "alert_repeat", 0, 30 * 86400, False),
    )
    for name, attr, lo, hi, integer in numbers:
        if (raw := get(name)) is not None:
            kw[attr] = _number(name, raw, minimum=lo, maximum=hi, integer=integer, seconds=name in _DURATIONS)
    if (max_delay := kw.get("reconnect_max_delay", 60.0)) < (min_delay := kw.get("reconnect_min_delay", 0.5)):
        raise ConfigError("WADM_RECONNECT_MAX_DELAY", get("WADM_RECONNECT_MAX_DELAY") or f"{max_delay:g}",
                          f"must be at least WADM_RECONNECT_MIN_DELAY ({min_delay:g})")
    depth, stored = kw.get("book_depth", 1000), kw.get("book_snapshot_depth", 100)
    usdm_depth = max((v for v in USDM_DEPTH_LIMITS if v <= depth), default=USDM_DEPTH_LIMITS[0])
    if stored > depth:
        raise ConfigError("BOOK_SNAPSHOT_DEPTH", get("BOOK_SNAPSHOT_DEPTH") or "100",
                          f"at most BOOK_DEPTH ({depth}): only snapshot levels are known")
    if stored > usdm_depth:
        raise ConfigError("BOOK_SNAPSHOT_DEPTH", get("BOOK_SNAPSHOT_DEPTH") or "100",
                          f"at most {usdm_depth}: Binance USD-M snapshots of BOOK_DEPTH={depth} hold "
                          f"{usdm_depth} levels (it offers {', '.join(map(str, USDM_DEPTH_LIMITS))})")
    if (raw := get("WADM_HOST")) is not None:
        raw = "127.0.0.1" if raw.strip().lower() == "localhost" else raw.strip()
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            raise ConfigError("WADM_HOST", raw, "an IPv4 or IPv6 address such as 127.0.0.1, 0.0.0.0 or ::, "
                              "or localhost") from None
        kw["host"] = raw
    kw["api_keys"] = _api_keys(get("WADM_API_KEYS"), get("WADM_API_KEYS_FILE"), cwd)
    if (raw := get("WADM_DATA_DIR")) is not None:
        kw["data_dir"] = Path(raw)
    if (raw := get("WADM_ALERT_WEBHOOK_URL")) is not None:
        kw["alert_webhook_url"] = _webhook(raw)
    if (raw := get("WADM_ALERT_FORMAT")) is not None:
        if raw.lower() not in ALERT_FORMATS:
            raise ConfigError("WADM_ALERT_FORMAT", raw, f"one of {', '.join(ALERT_FORMATS)}")
        kw["alert_format"] = raw.lower()
    if (raw := get("WADM_ALERT_TELEGRAM_CHAT_ID")) is not None:
        kw["alert_telegram_chat_id"] = raw
    if kw.get("alert_format") == "telegram" and not kw.get("alert_telegram_chat_id"):
        raise ConfigError("WADM_ALERT_TELEGRAM_CHAT_ID", "", "the chat id Telegram alerts go to (with "
                          "WADM_ALERT_FORMAT=telegram and the Bot API's sendMessage URL as the webhook)")
    if (raw := get("WADM_SPOOL_MAX_BYTES")) is not None:
        kw["spool_max_bytes"] = _size("WADM_SPOOL_MAX_BYTES", raw)
        if 0 < kw["spool_max_bytes"] < MIN_SPOOL_BYTES:
            raise ConfigError("WADM_SPOOL_MAX_BYTES", raw, "at least 1M (or 0: no spool); 4G, the default, holds "
                              "about two days of the default symbols")
    if (raw := get("MONGODB_URI")) is not None:
        kw["mongodb_uri"] = _mongodb_uri(raw)
    if not kw.get("mongodb_uri") or kw.get("spool_max_bytes", DEFAULT_SPOOL_BYTES):
        _check_data_dir(kw.get("data_dir", DEFAULT_DATA_DIR), cwd)
    if (raw := get("WADM_BINANCE_TRADE_STREAM")) is not None:
        if raw not in BINANCE_TRADE_STREAMS:
            raise ConfigError("WADM_BINANCE_TRADE_STREAM", raw, f"one of {', '.join(BINANCE_TRADE_STREAMS)}")
        kw["binance_trade_stream"] = raw
    if (raw := get("BYBIT_BOOK_DEPTH")) is not None:
        depth = _number("BYBIT_BOOK_DEPTH", raw, minimum=1, maximum=1000, integer=True)
        if depth not in BYBIT_BOOK_DEPTHS:
            raise ConfigError("BYBIT_BOOK_DEPTH", raw, f"one of {', '.join(map(str, BYBIT_BOOK_DEPTHS))}")
        kw["bybit_book_depth"] = depth
    if (raw := get("WADM_CHANNELS")) is not None:
        channels = tuple(dict.fromkeys(c.strip().lower() for c in raw.split(",") if c.strip()))
        if not channels or any(c not in CHANNELS for c in channels):
            raise ConfigError("WADM_CHANNELS", raw, f"a comma-separated list of {', '.join(CHANNELS)}")
        kw["channels"] = channels
    if (raw := get("WADM_LOG_LEVEL")) is not None:
        if raw.upper() not in LOG_LEVELS:
            raise ConfigError("WADM_LOG_LEVEL", raw, f"one of {', '.join(LOG_LEVELS)}")
        kw["log_level"] = raw.upper()
    for name in DEFAULT_URLS:
        if (raw := get(name)) is not None:
            schemes = ("ws", "wss") if name.endswith("_WS_URL") else ("http", "https")
            kw[name.removeprefix("WADM_").lower()] = _url(name, raw, schemes)

    symbols = dict(DEFAULT_SYMBOLS)
    file_raw = get("WADM_SYMBOLS_FILE")
    path = Path(file_raw) if file_raw else Path("config/symbols.yaml")
    path = path if path.is_absolute() else cwd / path
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a folder on the way that we may not read
        raise ConfigError("WADM_SYMBOLS_FILE", str(path), f"a readable YAML file ({exc})") from exc
    rows: dict[str, Decimal] = {}
    if exists:
        from_file, rows = _read_symbols_file(path)
        symbols.update(from_file)
    elif file_raw:
        raise ConfigError("WADM_SYMBOLS_FILE", file_raw, "the path of an existing YAML file")
    for key, name in SYMBOL_VARIABLES.items():
        raw_symbols = env.get(name)
        if raw_symbols is not None:
            symbols[key] = _symbols(name, raw_symbols)
    if not any(symbols.values()):
        given = {name: env.get(name, f"none in {path}") for name in SYMBOL_VARIABLES.values()}
        raise ConfigError(", ".join(SYMBOL_VARIABLES.values()), given,
                          f"at least one symbol in one of these variables or in {path}: "
                          "with every market empty the service could never be healthy")
    kw["targets"] = tuple(StreamTarget(venue=v, market=m, symbols=s) for (v, m), s in symbols.items() if s)
    # The variable, when set to something, wins over the file; empty (as a compose file passes an
    # unset one) leaves the file's rows and the derived defaults.
    from_env = bool((raw := get("FOOTPRINT_ROW")) and raw.strip())
    if from_env:
        rows = _footprint_rows("FOOTPRINT_ROW", raw)
    collected = {s for t in kw["targets"] for s in t.symbols}
    for symbol in rows:
        if symbol not in collected:
            source = "FOOTPRINT_ROW" if from_env else f"{path}: {FOOTPRINT_KEY}"
            raise ConfigError(source, symbol, f"a collected symbol ({', '.join(sorted(collected))})")
    kw["footprint_rows"] = tuple(sorted(rows.items()))
    return Settings(**kw)
