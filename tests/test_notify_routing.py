"""Routing and delivery: severities to recipients, quiet hours, digests instead of storms (on made-up time);
the webhook against a local HTTP server, retried with back-off, and what cannot be delivered is logged."""
import datetime as dt
import json
import logging

import pytest

from gateway import notify
from gateway.alarms.model import AlarmEvent
from gateway.errors import ConfigError
from gateway.notify import parse_routes
from gateway.notify.base import Ack, Notifier
from gateway.notify.dispatch import RetryPolicy, Worker
from gateway.notify.router import QuietHours, Route, Router, parse_hhmm
from gateway.notify.webhook import WebhookNotifier
from tests.notify_peers import WebhookReceiver
from tests.support import free_port, section_with_defaults


def event(n, severity="warning", raised=True, ts=1000.0):
    return AlarmEvent(alarm_id=n, object=f"string 1 cell {n}", point="cell.voltage", value=14.5, threshold=14.1,
                      severity=severity, message=f"String 1 cell {n}: voltage on float 14.50 V, too high",
                      active=raised, ts=ts, unit="V", string=1, cell=n)


def local_ts(hour, minute=0):
    return dt.datetime(2025, 3, 12, hour, minute).timestamp()


def routes():
    return [Route("on-call", frozenset({"critical"}), {"sms": ("+4917012345",)}, clears=False),
            Route("team", frozenset({"warning", "critical"}), {"email": ("team@x.example",)})]


def test_severities_go_to_their_recipients_and_clears_only_where_wanted():
    r = Router(routes(), "Plant A")
    out = r.handle(event(1, "warning"), 0)
    assert [o.route.name for o in out] == ["team"]
    out = r.handle(event(2, "critical"), 1)
    assert [o.route.name for o in out] == ["on-call", "team"]
    assert out[0].message.short == "Plant A: CRITICAL: String 1 cell 2: voltage on float 14.50 V, too high"
    out = r.handle(event(2, "critical", raised=False), 2)
    assert [o.route.name for o in out] == ["team"] and out[0].message.subject.startswith("[Plant A] CLEARED: ")


def test_a_storm_becomes_burst_messages_then_one_digest_per_window():
    r = Router(routes()[1:], "Plant A", burst=3, per_s=600, digest_s=60)
    sent = []
    for i in range(40):
        sent += r.handle(event(i, "critical" if i % 4 == 0 else "warning"), 100 + i * 0.1)
    assert len(sent) == 3 and not any(o.message.digest for o in sent)
    assert r.pending() == 37 and r.next_due() == pytest.approx(100.3 + 60)
    assert r.due(150) == []
    digest = r.due(161)
    assert len(digest) == 1 and digest[0].message.digest
    m = digest[0].message
    assert m.subject == "[Plant A] 37 alarms raised (9 critical), 0 cleared in 60 s"
    assert len(m.events) == 37 and m.severity == "critical" and "one message instead of 37" in m.body
    assert r.pending() == 0 and r.next_due() is None
    # the bucket refills: after a quiet while single alarms go out one by one again
    assert len(r.handle(event(99), 161 + 600)) == 1


def test_quiet_hours_hold_messages_and_send_one_digest_when_they_end():
    quiet = QuietHours(parse_hhmm("22:00"), parse_hhmm("07:00"), frozenset({"critical"}))
    r = Router([Route("team", frozenset({"warning", "critical"}), {"email": ("t@x.example",)}, quiet=quiet)], "A")
    assert quiet.active(local_ts(23, 30)) and quiet.active(local_ts(6, 59)) and not quiet.active(local_ts(7, 0))
    assert r.handle(event(1), local_ts(23, 0)) == []
    night = dt.datetime(2025, 3, 13, 2, 0).timestamp()
    assert r.handle(event(2, raised=False), night) == []
    assert len(r.handle(event(3, "critical"), night)) == 1  # critical gets through
    assert r.next_due() == dt.datetime(2025, 3, 13, 7, 0).timestamp()  # the morning after the first held event
    due = r.due(r.next_due())
    assert len(due) == 1 and [e.alarm_id for e in due[0].message.events] == [1, 2]
    assert "during quiet hours" in due[0].message.subject
    with pytest.raises(ValueError):
        parse_hhmm("25:00")


class Mailer(Notifier):
    name = "email"
    routed = True

    def check_recipient(self, r):
        return None if "@" in r else "not an e-mail address"

    def deliver(self, recipient, item):
        pass


def test_routes_are_checked_against_the_notifiers():
    cfg = {"routes": [{"name": "team", "severities": ["warning"], "recipients": {"email": ["ops"]}}]}
    with pytest.raises(ConfigError, match=r"notify.routes\[0\].recipients.email\[0\]: 'ops': not an e-mail address"):
        parse_routes(cfg, {"email": Mailer()})
    web = WebhookNotifier(webhook({"url": "http://127.0.0.1:1/x"}), {})
    cfg = {"routes": [{"name": "team", "recipients": {"webhook": ["x"]}}]}
    with pytest.raises(ConfigError, match="takes no recipients"):
        parse_routes(cfg, {"webhook": web})
    with pytest.raises(ConfigError, match=r"notify\.webhook\.url"):
        WebhookNotifier(webhook({"url": "ftp://example.com/"}), {})


def test_webhook_posts_json_and_is_retried_with_back_off_until_it_answers(caplog):
    with WebhookReceiver(fail_first=2, fail_status=503) as recv:
        n = WebhookNotifier(webhook({"url": recv.url, "headers": {"Authorization": "Bearer t0ken"}, "timeout_s": 5}),
                            {"name": "Plant A", "id": "plant-a"})
        worker = Worker(n, RetryPolicy(attempts=5, backoff_s=0.05, max_backoff_s=0.2))
        worker.start()
        with caplog.at_level(logging.WARNING, logger="gateway.notify.dispatch"):
            worker.submit(None, event(5, "critical"))
            worker.submit(None, Ack(AlarmEvent(**{**event(5, "critical").to_dict(), "acknowledged_by": "alice",
                                                  "acknowledged": 1001.0, "ts": 1001.0})))
            assert worker.idle.wait(10)
        worker.stop()
        assert recv.requests == 4 and worker.delivered == 2 and worker.retried == 2 and worker.failed == 0
        by_type = {b["type"]: b for b in recv.bodies()}
        alarm, ack = by_type["alarm"], by_type["acknowledgement"]
        assert alarm["type"] == "alarm" and alarm["state"] == "raised" and alarm["alarm_id"] == 5
        assert alarm["severity"] == "critical" and alarm["site"] == {"name": "Plant A", "id": "plant-a"}
        assert ack["type"] == "acknowledgement" and ack["acknowledged_by"] == "alice"
        # the posted JSON keeps its published keys, whatever the event calls them
        assert (ack["acknowledged_ts"], ack["metric"], ack["text"], ack["raised"]) == (1001.0, "cell.voltage",
                                                                                       alarm["text"], True)
        assert not {"point", "acknowledged", "message", "active"} & (alarm.keys() | ack.keys())
        assert alarm["acknowledged_ts"] is None and alarm["raised_ts"] is None
        assert recv.posts[0]["headers"]["Authorization"] == "Bearer t0ken"
        assert recv.posts[0]["headers"]["Content-Type"] == "application/json"
        assert "answered 503" in caplog.text and "trying again in 0.05 s" in caplog.text
        json.dumps(alarm)


def test_what_cannot_be_delivered_is_logged_and_a_client_error_is_not_retried(caplog):
    port = free_port()  # nothing listens there
    worker = Worker(WebhookNotifier(webhook({"url": f"http://127.0.0.1:{port}/x", "timeout_s": 2}), {}),
                    RetryPolicy(attempts=3, backoff_s=0.05, max_backoff_s=0.1))
    worker.start()
    with caplog.at_level(logging.ERROR, logger="gateway.notify.dispatch"):
        worker.submit(None, event(8))
        assert worker.idle.wait(10)
    worker.stop()
    assert worker.failed == 1 and worker.retried == 2
    assert f"webhook: alarm 8 (raised): could not deliver after 3 attempts: http://127.0.0.1:{port}/x:" in caplog.text
    assert "Connection refused" in caplog.text

    with WebhookReceiver(fail_first=10, fail_status=404) as recv:
        worker = Worker(WebhookNotifier(webhook({"url": recv.url}), {}), RetryPolicy(attempts=5, backoff_s=0.05))
        worker.start()
        worker.submit(None, event(9))
        assert worker.idle.wait(10)
        worker.stop()
        assert recv.requests == 1 and worker.failed == 1  # 404 will not get better by asking again
        assert "answered 404" in worker.failures[-1]["reason"]


def test_a_stopping_gateway_logs_what_is_still_waiting(caplog):
    port = free_port()
    worker = Worker(WebhookNotifier(webhook({"url": f"http://127.0.0.1:{port}/x", "timeout_s": 1}), {}),
                    RetryPolicy(attempts=5, backoff_s=30))
    worker.start()
    worker.submit(None, event(3))
    for _ in range(200):
        if worker.retried:
            break
        worker.idle.wait(0.02)
    with caplog.at_level(logging.ERROR, logger="gateway.notify.dispatch"):
        worker.stop(timeout=2)
    assert "alarm 3 (raised): not delivered: the gateway stopped (last error:" in caplog.text


def test_notifier_config_errors_name_the_file_and_key(tmp_path):
    from gateway.app import Gateway
    from tests.support import small_bank, write_config

    path = write_config(tmp_path, base=small_bank(strings=1, cells=2), overrides={
        "notify": {"webhook": {"enabled": True, "url": "mailto:ops@example.com"}}})
    gw = Gateway(path)
    with pytest.raises(ConfigError) as err:
        notify.NotifyManager(gw, gw.config.section("notify"))
    assert str(err.value).startswith(f"{path}: notify.webhook.url: expected an http:// or https:// URL")


def webhook(cfg: dict) -> dict:
    """``notify.webhook`` as the gateway hands it to the notifier (the schema's defaults filled in)."""
    return section_with_defaults("notify", {"webhook": cfg})["webhook"]
