"""E-mail against a real SMTP server on loopback (aiosmtpd): STARTTLS, login, the delivered message; a refused
login is not retried; an alarm storm in the running gateway becomes a few messages and one digest."""
import logging

from gateway import alarms, notify
from gateway.alarms.model import AlarmEvent
from gateway.notify.dispatch import RetryPolicy, Worker
from gateway.notify.mail import EmailNotifier
from gateway.notify.router import compose_single
from tests.notify_peers import SmtpServer
from tests.support import GatewayThread, small_bank, write_config


def email_cfg(server, **over):
    cfg = {"enabled": True, "host": "127.0.0.1", "port": server.port, "security": "starttls",
           "username": server.user, "password": server.password, "password_file": "", "sender": "bmsgw@site.example",
           "ca_file": str(server.cert), "verify": True, "timeout_s": 10}
    cfg.update(over)
    return cfg


EVENT = AlarmEvent(alarm_id=42, object="string 2 cell 37", point="cell.ohmic_baseline_deviation", value=34.2,
                   threshold=30.0, severity="critical",
                   message="String 2 cell 37: ohmic value 6.1 mOhm, +34 % over baseline (alarm at +30 %)",
                   active=True, ts=1.7e9, unit="%", string=2, cell=37)


def test_email_goes_out_over_starttls_with_login(tmp_path):
    with SmtpServer(tmp_path) as server:
        n = EmailNotifier(email_cfg(server))
        n.deliver("oncall@site.example", compose_single(EVENT, "Plant A", "on-call"))
        assert len(server.messages) == 1
        mail_from, rcpts, tls, authed = server.envelopes[0]
        assert (mail_from, rcpts, tls, authed) == ("bmsgw@site.example", ["oncall@site.example"], True, True)
        msg = server.messages[0]
        assert msg["Subject"] == "[Plant A] CRITICAL: " + EVENT.message
        assert msg["To"] == "oncall@site.example" and msg["X-Bmsgw-Alarms"] == "42"
        body = msg.get_content()
        assert EVENT.message in body and "#42, critical, raised" in body and "Setpoint:    30 %" in body
        assert server.auth_attempts == [("bmsgw", True)]


def test_a_refused_login_is_logged_and_not_retried(tmp_path, caplog):
    with SmtpServer(tmp_path) as server:
        worker = Worker(EmailNotifier(email_cfg(server, password="wrong")), RetryPolicy(5, 0.05, 0.1))
        worker.start()
        with caplog.at_level(logging.ERROR, logger="gateway.notify.dispatch"):
            worker.submit("oncall@site.example", compose_single(EVENT, "Plant A", "on-call"))
            assert worker.idle.wait(10)
            worker.stop()
        # smtplib tries each offered mechanism (PLAIN, LOGIN) once, in one session; no second session
        assert server.messages == [] and server.auth_attempts == [("bmsgw", False)] * 2
        assert worker.failed == 1 and worker.retried == 0
        assert "could not deliver after permanent error: login as bmsgw refused: 535" in caplog.text
        assert "alarm 42 (raised) to oncall@site.example" in caplog.text


def test_an_untrusted_certificate_is_a_failure_not_a_downgrade(tmp_path):
    with SmtpServer(tmp_path) as server:
        worker = Worker(EmailNotifier(email_cfg(server, ca_file="")), RetryPolicy(2, 0.05, 0.1))
        worker.start()
        worker.submit("oncall@site.example", compose_single(EVENT, "Plant A", "on-call"))
        assert worker.idle.wait(10)
        worker.stop()
        assert server.messages == [] and worker.failed == 1
        assert "certificate is not trusted" in worker.failures[-1]["reason"]


def test_an_alarm_storm_becomes_a_few_messages_and_one_digest(tmp_path):
    with SmtpServer(tmp_path) as server:
        path = write_config(tmp_path, base=small_bank(strings=1, cells=8), overrides={
            "alarms": {"rules": {"cell_voltage_float": {"on_delay_s": 0}}},
            "notify": {"email": email_cfg(server), "rate_limit": {"burst": 2, "per_s": 600}, "digest_s": 1.0,
                       "relay": {"enabled": False},
                       "routes": [{"name": "team", "severities": ["warning", "critical"],
                                   "recipients": {"email": ["team@site.example"]}},
                                  {"name": "night", "severities": ["critical"], "clears": False,
                                   "recipients": {"email": ["oncall@site.example"]}}]}})
        with GatewayThread(path) as gt:
            gw = gt.gateway
            for cell in range(1, 9):  # every battery of the string over the float window at once
                gw.simulator.model.battery(1, cell).float_offset += 1.0
            mgr = alarms.get_manager(gw)
            gt.wait_for(lambda: len(mgr.active()) == 16, timeout=15, what="16 alarms")
            nm = notify.get_manager(gw)
            gt.wait_for(lambda: nm.router.pending() == 0 and nm.router.next_due() is None, timeout=10,
                        what="digests sent")
            assert nm.wait_idle(10)
            to_team = [m for m in server.messages if m["To"] == "team@site.example"]
            to_oncall = [m for m in server.messages if m["To"] == "oncall@site.example"]
            # 16 alarms: 2 single messages, then one digest of the other 14 (per route)
            assert len(to_team) == 3 and len(to_oncall) == 3
            digest = next(m for m in to_team if "alarms raised" in m["Subject"])
            assert digest["Subject"].startswith("[Battery room] 14 alarms raised (")
            body = digest.get_content()
            assert "one message instead of 14" in body and body.count("String 1 cell ") == 14
            night_digest = next(m for m in to_oncall if "alarms raised" in m["Subject"])
            assert night_digest["Subject"].startswith("[Battery room] 6 alarms raised (6 critical)")
            assert nm.status()["notifiers"]["email"]["failed"] == 0


def test_bmsgw_notify_test_sends_a_made_up_alarm_through_the_routes(tmp_path, capsys):
    from gateway.cli import main
    from tests.notify_peers import WebhookReceiver

    with SmtpServer(tmp_path) as server, WebhookReceiver() as hook:
        path = write_config(tmp_path, base=small_bank(strings=1, cells=2), overrides={
            "notify": {"email": email_cfg(server), "webhook": {"enabled": True, "url": hook.url},
                       "routes": [{"name": "team", "recipients": {"email": ["team@site.example"]}}]}})
        assert main(["notify-test", "-c", str(path)]) == 0
        out = capsys.readouterr().out
        assert "email: 1 delivered, 0 failed" in out and "webhook: 1 delivered, 0 failed" in out
        assert "relay" not in out
        assert server.messages[0]["Subject"] == ("[Battery room] CRITICAL: Test message from bmsgw: "
                                                 "notifications work")
        assert hook.bodies()[0]["text"].startswith("Test message from bmsgw")
    with SmtpServer(tmp_path, password="other") as server:
        path = write_config(tmp_path, base=small_bank(strings=1, cells=2), overrides={
            "notify": {"email": email_cfg(server, password="wrong"), "retry": {"attempts": 1},
                       "routes": [{"name": "team", "recipients": {"email": ["team@site.example"]}}]}})
        assert main(["notify-test", "-c", str(path)]) == 1
        assert "email: 0 delivered, 1 failed (could not deliver after permanent error: login" in capsys.readouterr().out
