"""Alerts reach a real HTTP receiver on loopback: a stream outage and a store outage, each with
its recovery; formats for chat services; a receiver that fails does not hurt the service."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from tests.helpers import binance_spot_settings, health, until
from tests.integration.test_outage import Nx
from wadm.api.metrics import Metrics
from wadm.api.work import Work
from wadm.emulator import Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.store.mongo import MongoStore
from wadm.store.sqlite import SqliteStore

pytestmark = pytest.mark.asyncio

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


class Receiver:
    """A webhook receiver: keeps every JSON body posted to it; answers ``status``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/wadm"

    def alerts(self, name: str, state: str) -> list[dict[str, Any]]:
        return [a for b in list(self.bodies) for a in b.get("alerts", []) if a["name"] == name and a["state"] == state]


@contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@asynccontextmanager
async def gone_quiet(tmp_path: Path, hook: Receiver, alert_after: float) -> AsyncIterator[tuple[Service, Emulator]]:
    """A service collecting one live stream, whose market has just gone quiet (the stream goes stale and stays so)."""
    async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=200)], seed=7) as emu:
        settings = binance_spot_settings(emu, stale_after=1.0, alert_webhook_url=hook.url, alert_after=alert_after,
                                         data_dir=tmp_path)
        svc = Service(settings, SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            await until(lambda: health(svc)[0], 15, "the stream to be live")
            emu.pause()
            yield svc, emu
        finally:
            await svc.stop()


async def test_a_stream_outage_is_alerted_once_and_its_recovery_too(tmp_path: Path) -> None:
    with receiver() as hook:
        async with gone_quiet(tmp_path, hook, alert_after=1.5) as (svc, emu):
            await until(lambda: hook.alerts("stream_down", "firing"), 20, "the outage alert")
            (firing,) = hook.alerts("stream_down", "firing")
            assert firing["severity"] == "critical" and "BTCUSDT" in firing["subject"]
            assert firing["details"]["symbol"] == "BTCUSDT" and firing["details"]["state"] != "live"
            body = next(b for b in hook.bodies if b.get("alerts"))
            assert body["source"] == "wadm" and "BTCUSDT" in body["text"]
            emu.resume()
            await until(lambda: hook.alerts("stream_down", "resolved"), 20, "the recovery alert")
            assert len(hook.alerts("stream_down", "firing")) == 1  # de-duplicated while it lasted
            assert svc.alerter is not None and svc.alerter.failed == 0


async def test_a_store_outage_is_alerted_with_the_spool_and_recovers(tmp_path: Path) -> None:
    nx = Nx(tmp_path)
    await nx.start()
    with receiver() as hook:
        async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300)], seed=7) as emu:
            settings = binance_spot_settings(emu, alert_webhook_url=hook.url, alert_after=1.0, data_dir=tmp_path)
            svc = Service(settings, MongoStore(nx.uri, server_selection_timeout=0.3))
            await svc.start()
            try:
                await until(lambda: health(svc)[0], 15, "the stream to be live")
                await nx.kill()
                await until(lambda: hook.alerts("store_down", "firing") and hook.alerts("spool", "firing"), 20,
                            "the store and spool alerts")
                assert hook.alerts("spool", "firing")[0]["details"]["batches"] > 0
                assert not hook.alerts("stream_down", "firing")  # collection went on
                await nx.start()
                await until(lambda: hook.alerts("store_down", "resolved") and hook.alerts("spool", "resolved"), 30,
                            "the recovery alerts")
                assert health(svc)[0]
            finally:
                await svc.stop()
                await nx.kill()


async def test_a_spool_past_its_bound_is_alerted_with_the_gaps_it_left(tmp_path: Path) -> None:
    nx = Nx(tmp_path)
    await nx.start()
    with receiver() as hook:
        async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=1500)], seed=7) as emu:
            settings = binance_spot_settings(emu, alert_webhook_url=hook.url, alert_after=1.0, data_dir=tmp_path,
                                             spool_max_bytes=256 * 1024)
            svc = Service(settings, MongoStore(nx.uri, server_selection_timeout=0.3))
            await svc.start()
            try:
                await until(lambda: health(svc)[0], 15, "the stream to be live")
                await nx.kill()  # the store is down: the spool fills up, then drops its oldest batches
                await until(lambda: hook.alerts("spool_full", "firing") and hook.alerts("gap", "firing"), 60,
                            "the spool_full and gap alerts")
                (full,) = hook.alerts("spool_full", "firing")[:1]
                assert full["severity"] == "critical" and full["details"]["dropped_rows"] > 0
                gap = hook.alerts("gap", "firing")[0]
                assert "btcusdt@" in gap["subject"] and "/api/v1/gaps" in gap["summary"]
            finally:
                await svc.stop()


async def test_a_failing_receiver_is_retried_and_counted_not_fatal(tmp_path: Path) -> None:
    with receiver() as hook:
        hook.status = 500
        async with gone_quiet(tmp_path, hook, alert_after=1.0) as (svc, _):
            assert svc.alerter is not None
            alerter = svc.alerter
            await until(lambda: alerter.failed >= 1, 30, "a delivery to be given up")
            assert len(hook.bodies) >= 3  # retried before giving up
            assert not svc.supervisor.restarts.get("alerts")


def _names_in(text: str) -> set[str]:
    return set(re.findall(r"\b((?:wadm|process)_[a-z_]+)", text))


async def test_the_prometheus_rules_and_the_dashboard_use_metrics_wadm_exposes(tmp_path: Path) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "wadm-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 8 and all(r["labels"]["severity"] in ("critical", "warning")
                                   for g in rules["groups"] for r in g["rules"])
    dashboard = json.loads((DEPLOY / "grafana" / "wadm-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n.removesuffix("_bucket") for e in exprs for n in _names_in(e)}
    async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=100)], seed=7) as emu:
        svc = Service(binance_spot_settings(emu, channels=("trades", "book"), data_dir=tmp_path),
                      SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            await until(lambda: health(svc)[0], 20, "the streams to be live")
            exposed = generate_latest(Metrics(svc.live, Work(running=1, waiting=1)).registry).decode()
        finally:
            await svc.stop()
    names = {n for n in _names_in(exposed)}
    assert used <= names, used - names
