"""Resume after a restart: each stream continues where its stored data ends, within retention.

Every trade and kline stream asks on its own, concurrently, for the newest batch stored before
this process started: in the spool (batches an earlier run could not store yet), else in the
store. Collection does not wait for the answers: a slow or hanging store delays no connection.
The streams take the answer before or after their first live data
(:meth:`~wadm.venues.base.TradeStream.resume`, :meth:`~wadm.venues.streams.KlineStream.resume`)
and return what was missed in between, which the collector recovers or records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import polars as pl

from wadm.config import Settings
from wadm.errors import StoreError
from wadm.pipeline.collector import Collector
from wadm.pipeline.writer import Writer
from wadm.store.base import Store
from wadm.units import NS_PER_MS, NS_PER_S
from wadm.venues.base import Action, TradeStream
from wadm.venues.streams import KlineStream

__all__ = ["RESUME_TIMEOUT", "resume_streams"]

log = logging.getLogger(__name__)

RESUME_TIMEOUT = 60.0  # seconds one stream waits for the store's answer before it collects from now


async def resume_streams(settings: Settings, store: Store, writer: Writer, collectors: Sequence[Collector]) -> None:
    """Resume every trade and kline stream of ``collectors``: where the spool ends, else (once the
    store is open) where the store does."""
    started = time.time_ns()
    results = await asyncio.gather(*(
        _resume(settings, store, writer, collector, name, started)
        for collector in collectors
        for name, st in collector.streams.items()
        if isinstance(st, TradeStream | KlineStream)
    ))
    if resumed := sum(results):
        log.info("Resuming %d streams where the store ends; what was missed meanwhile is backfilled", resumed)


async def _resume(settings: Settings, store: Store, writer: Writer, collector: Collector, name: str,
                  started: int) -> bool:
    """Resume one stream; True when the spool or the store held something for it."""
    st = collector.streams[name]
    # The spool holds the newest rows of a series when it holds any (it is written to the store in order).
    try:
        last = writer.newest_spooled(collector.keys[name])
    except (OSError, StoreError) as exc:
        log.warning("Could not read the spool for %s (%s)", name, exc, extra={"stream": name})
        last = None
    if last is None:
        await writer.ready.wait()
        try:
            async with asyncio.timeout(RESUME_TIMEOUT):
                last = await store.latest(collector.keys[name], before=started)
        except (StoreError, TimeoutError) as exc:
            log.warning("Could not read where %s ended (%s); collecting from now", name, exc or "timed out",
                        extra={"stream": name})
            return False
    if last.height == 0:
        return False  # nothing stored: a first start
    newest = last.sort("ts_event").row(-1, named=True)
    now = time.time_ns()
    actions: Sequence[Action] = ()
    if isinstance(st, KlineStream):
        # Only data within its retention is resumed from: an older end is history, not a gap.
        if newest["ts_event"] >= now - settings.retention_aggregates_1m * NS_PER_S:
            missed = st.resume(newest["ts_event"] // NS_PER_MS)
            actions = () if missed is None else (missed,)
    elif isinstance(st, TradeStream):
        horizon = now - settings.retention_raw_trades * NS_PER_S
        if newest["ts_event"] < horizon:
            actions = st.resume(horizon, None)  # stored trades end before the window we keep: record it
        else:
            # Ordered ids: the highest stored; unordered (Bybit): the newest, and every stored id
            # is remembered so that a backfill does not store them again.
            newest_id = last["id"].max() if st.recent is None else newest["id"]
            st.remember(last["id"].cast(pl.String).to_list())
            assert isinstance(newest_id, int | str)
            actions = st.resume(newest["ts_event"], newest_id)
    collector.execute(actions)
    return True
