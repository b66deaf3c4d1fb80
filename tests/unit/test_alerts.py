"""Alert bodies for chat services, and the alert settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from wadm.config import load_settings
from wadm.errors import ConfigError
from wadm.pipeline.alerts import Alert, render


def test_chat_formats() -> None:
    alerts = [Alert("stream_down", "firing", "critical", "binance spot BTCUSDT btcusdt@aggTrade",
                    "binance spot BTCUSDT btcusdt@aggTrade is stale", 0.0),
              Alert("store_down", "resolved", "critical", "mongodb", "mongodb: store down is over", 0.0)]
    slack = render(alerts, "slack", "vps1")
    assert list(slack) == ["text"] and "[CRITICAL] binance spot BTCUSDT" in slack["text"]
    assert "[RESOLVED] mongodb" in slack["text"] and "1 firing, 1 resolved" in slack["text"]
    assert list(render(alerts, "discord", "vps1")) == ["content"]
    assert render(alerts, "telegram", "vps1", "-100123")["chat_id"] == "-100123"
    many = [alerts[0]] * 200
    assert len(render(many, "discord", "vps1")["content"]) <= 2000  # Discord's limit
    body = render(alerts, "json", "vps1")
    assert [a["state"] for a in body["alerts"]] == ["firing", "resolved"] and body["host"] == "vps1"


def test_alert_settings(tmp_path: Path) -> None:
    url = "https://hooks.slack.com/services/T000/B000/secret-token"
    settings = load_settings({"WADM_ALERT_WEBHOOK_URL": url, "WADM_ALERT_FORMAT": "Slack",
                              "WADM_ALERT_AFTER": "30", "WADM_ALERT_REPEAT": "0"}, cwd=tmp_path)
    assert (settings.alert_webhook_url, settings.alert_format, settings.alert_after, settings.alert_repeat) == (
        url, "slack", 30.0, 0.0)
    assert "secret-token" not in repr(settings) and "secret-token" not in str(settings.as_dict())
    for env, name in (({"WADM_ALERT_WEBHOOK_URL": "ftp://x/secret-token"}, "WADM_ALERT_WEBHOOK_URL"),
                      ({"WADM_ALERT_WEBHOOK_URL": "https:///secret-token"}, "WADM_ALERT_WEBHOOK_URL"),
                      ({"WADM_ALERT_FORMAT": "teams"}, "WADM_ALERT_FORMAT"),
                      ({"WADM_ALERT_FORMAT": "telegram"}, "WADM_ALERT_TELEGRAM_CHAT_ID"),
                      ({"WADM_ALERT_AFTER": "0"}, "WADM_ALERT_AFTER")):
        with pytest.raises(ConfigError) as info:
            load_settings(env, cwd=tmp_path)
        assert info.value.name == name and "secret-token" not in str(info.value)
