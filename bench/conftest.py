"""Shared benchmark helpers: collection of ``bench_*.py``, recorded frames and the ratio summary.

Every benchmark measures its baseline in the same run and reports *ratios* against it, so the
numbers stay comparable on a shared, noisy machine (STYLE.md convention 14). Results are
registered with :func:`record` (times) or :func:`record_rate` (throughputs) and printed as one
table per group at the end of the session, with the target each group is held to. Nothing here
asserts on time.

Run a file with ``uv run pytest bench/bench_parse.py --benchmark-only`` (pyproject's addopts has
``--benchmark-skip``, which ``--benchmark-only`` overrides); ``uv run pytest`` alone collects
``tests/`` only.
"""

from __future__ import annotations

import gzip
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "binance"
RECORDINGS = {"spot": "spot_btcusdt_20240808.gz", "usdm": "usdm_btcusdt_20240808.gz"}


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    """Collect ``bench/bench_*.py`` as test modules, so ``pytest bench --benchmark-only`` works."""
    here = Path(__file__).parent
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_") or file_path.parent != here:
        return None
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it already
    return pytest.Module.from_parent(parent, path=file_path)


def recorded_trade_frames(market: str) -> tuple[list[bytes], list[int]]:
    """Return the ``@trade`` frames of a recording and their receive times (ns), in order."""
    frames: list[bytes] = []
    ts_recv: list[int] = []
    with gzip.open(DATA / RECORDINGS[market], "rb") as fh:
        for line in fh:
            ts, _, frame = line.rstrip(b"\n").partition(b" ")
            if b'@trade"' in frame[:40]:
                frames.append(frame)
                ts_recv.append(int(ts))
    return frames, ts_recv


# -- the summary -----------------------------------------------------------------------------


@dataclass
class Row:
    """One measured variant."""

    name: str
    value: float  # median seconds (times) or units per second (rates)
    best: float = 0.0  # times: the fastest round, the figure least disturbed by other load
    per: int = 0  # items handled per measured call (times), for a per-item figure
    note: str = ""
    samples: list[float] = field(default_factory=list)  # rates: one value per repetition
    paired: list[float] = field(default_factory=list)  # times: variant/baseline ratio of interleaved pairs

    @property
    def ratio(self) -> float | None:
        """Median of the interleaved ratios to the baseline, if measured."""
        return statistics.median(self.paired) if self.paired else None


@dataclass
class Group:
    """Variants compared against one baseline."""

    title: str
    kind: str  # "time" (lower is better) or "rate" (higher is better)
    baseline: str
    target: str = ""
    check: Callable[[dict[str, Row]], str] | None = None  # returns a verdict line
    reference: str = ""  # rates: a second row to divide by (e.g. what the source can deliver)
    rows: dict[str, Row] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


GROUPS: dict[str, Group] = {}


def group(key: str, title: str, *, kind: str, baseline: str, target: str = "",
          check: Callable[[dict[str, Row]], str] | None = None, reference: str = "") -> Group:
    """Declare (once) a group of variants and its baseline."""
    return GROUPS.setdefault(key, Group(title, kind, baseline, target, check, reference))


def record(key: str, name: str, benchmark: Any, per: int = 0, note: str = "",
           paired: list[float] | None = None) -> None:
    """Register the median time of a finished ``benchmark`` (and its paired ratios) under a group."""
    stats = benchmark.stats.stats
    GROUPS[key].rows[name] = Row(name, float(stats.median), best=float(stats.min), per=per, note=note,
                                 paired=paired or [])


def paired_ratios(baseline: Callable[[], object], variant: Callable[[], object], *,
                  budget: float = 2.0, min_pairs: int = 15, max_pairs: int = 400) -> list[float]:
    """Time ``variant`` and ``baseline`` alternately; return ``variant / baseline`` per pair.

    Interleaving makes both sides of a ratio see the same background load: on a shared machine
    the load drifts over seconds, while one pair lasts milliseconds. The order alternates
    (ABBA) so that neither side always runs on a warmer cache.
    """
    clock = time.perf_counter
    ratios: list[float] = []
    variant()  # warm up both
    baseline()
    started = clock()
    while len(ratios) < max_pairs and (len(ratios) < min_pairs or clock() - started < budget):
        if len(ratios) % 2:
            t0 = clock()
            variant()
            t1 = clock()
            baseline()
            t2 = clock()
            ratios.append((t1 - t0) / (t2 - t1))
        else:
            t0 = clock()
            baseline()
            t1 = clock()
            variant()
            t2 = clock()
            ratios.append((t2 - t1) / (t1 - t0))
    return ratios


def record_rate(key: str, name: str, rate: float, note: str = "") -> None:
    """Register one throughput sample (units/s) of a variant; repeated samples keep a median."""
    row = GROUPS[key].rows.setdefault(name, Row(name, 0.0, note=note))
    row.samples.append(rate)
    row.value = statistics.median(row.samples)
    if note:
        row.note = note


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.2f} {unit}"
    return f"{seconds / 1e-9:8.1f} ns"


def machine() -> str:
    """A one-line description of the machine (CPU model, cores, Python)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print each group's variants as ratios to its baseline, and the verdict against its target."""
    if not any(g.rows for g in GROUPS.values()):
        return
    tr = terminalreporter
    tr.section("WADM benchmark ratios (baseline measured in the same run)")
    tr.write_line(machine())
    if any(g.rows and g.kind == "time" for g in GROUPS.values()):
        tr.write_line("times: median of rounds. paired x = median of variant/baseline over interleaved pairs (the "
                      "figure used for targets); x = median / baseline median; min x = fastest / baseline fastest")
    for g in GROUPS.values():
        if not g.rows:
            continue
        tr.write_line("")
        tr.write_line(f"{g.title}  [baseline: {g.baseline}]" if g.baseline else g.title)
        base = g.rows.get(g.baseline)
        for row in g.rows.values():
            if g.kind == "time":
                per = f"{row.value / row.per * 1e9:9.0f} ns/item" if row.per else " " * 17
                ratio = f"x{row.value / base.value:5.2f} (min x{row.best / base.best:5.2f})" if base else "n/a"
                if row.paired:
                    q = statistics.quantiles(row.paired, n=4) if len(row.paired) > 1 else [row.paired[0]] * 3
                    ratio = f"paired x{row.ratio:5.2f} [IQR {q[0]:.2f}-{q[2]:.2f}, n={len(row.paired)}]; " + ratio
                tr.write_line(f"  {row.name:<40} {_fmt_time(row.value)}  {per}  {ratio}  {row.note}")
            else:
                ratio = f"x{row.value / base.value:6.3f}" if base and base.value else ""
                ref = g.rows.get(g.reference)
                if ref and ref.value:
                    ratio += f" (x{row.value / ref.value:5.3f} of {g.reference.split(' (')[0]})"
                spread = ""
                if len(row.samples) > 1:
                    spread = f"(range {min(row.samples):,.0f}-{max(row.samples):,.0f}, n={len(row.samples)})"
                tr.write_line(f"  {row.name:<40} {row.value:12,.0f} /s  {ratio}  {spread} {row.note}")
        for note in g.notes:
            tr.write_line(f"  note: {note}")
        if g.target:
            verdict = g.check(g.rows) if g.check else ""
            tr.write_line(f"  target: {g.target}  {verdict}")
