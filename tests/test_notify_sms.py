"""SMS through a simulated 4G modem on a pseudo-terminal: the AT dialogue (PIN, text mode, CMGS with its
prompt and Ctrl-Z), modem errors (+CMS ERROR, plain ERROR, no network) and what is retried and what not."""
import logging

from gateway import alarms, notify
from gateway.alarms.model import AlarmEvent
from gateway.notify.dispatch import RetryPolicy, Worker
from gateway.notify.modem import gsm_text
from gateway.notify.router import compose_single
from gateway.notify.sms import SmsNotifier
from tests.notify_peers import SimulatedModem
from tests.support import GatewayThread, small_bank, write_config

EVENT = AlarmEvent(alarm_id=7, object="string 1 cell 7", point="cell.temperature", value=5.2, threshold=3.0,
                   severity="warning", active=True, ts=1.7e9, unit="C",
                   message="String 1 cell 7: temperature 29.2 °C, 5.2 °C above ambient (warning at +3.0 °C)")


def sms_cfg(modem, **over):
    cfg = {"enabled": True, "port": modem.path, "baud": 115200, "pin": "1234", "pin_file": "", "max_length": 160,
           "timeout_s": 2, "send_timeout_s": 5, "check_network": True}
    cfg.update(over)
    return cfg


def run(worker, *numbers):
    worker.start()
    for n in numbers:
        worker.submit(n, compose_single(EVENT, "Plant A", "team"))
    assert worker.idle.wait(15)
    worker.stop()


def test_sms_dialogue_unlocks_the_sim_selects_text_mode_and_sends(tmp_path):
    with SimulatedModem(pin="1234") as modem:
        n = SmsNotifier(sms_cfg(modem))
        try:
            n.deliver("+491701234567", compose_single(EVENT, "Plant A", "team"))
            n.deliver("+491709999999", compose_single(EVENT, "Plant A", "team"))
        finally:
            n.close()
        assert modem.dialogue == [
            "AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", 'AT+CPIN="1234"', "AT+CPIN?", "AT+CMGF=1", 'AT+CSCS="GSM"',
            "AT+CREG?", 'AT+CMGS="+491701234567"', "<text to +491701234567>",
            'AT+CMGS="+491709999999"', "<text to +491709999999>"]  # initialised once
        assert modem.protocol_errors == [] and modem.pin_tries == ["1234"]
        number, text = modem.sms[0]
        assert number == "+491701234567"
        assert text == "Plant A: WARNING: String 1 cell 7: temperature 29.2 C, 5.2 C above ambient (warning at +3.0 C)"
        assert len(text) <= 160


def test_long_texts_are_cut_to_one_sms_in_the_gsm_alphabet():
    text = gsm_text("ohm Ω [x] ~ " + "a" * 300, 160)
    assert len(text) == 160 and text.endswith("...") and text.startswith("ohm Ohm (x) - ")


def test_a_network_error_is_retried_with_back_off_and_then_delivered(caplog):
    with SimulatedModem(pin=None, cms_errors=[331]) as modem:
        worker = Worker(SmsNotifier(sms_cfg(modem, pin="")), RetryPolicy(4, 0.05, 0.2))
        with caplog.at_level(logging.WARNING, logger="gateway.notify.dispatch"):
            run(worker, "+491701234567")
        assert [n for n, _ in modem.sms] == ["+491701234567"]
        assert worker.delivered == 1 and worker.retried == 1 and worker.failed == 0
        assert "+CMS ERROR: 331 (no network service); trying again in 0.05 s" in caplog.text
        assert sum(1 for d in modem.dialogue if d.startswith("AT+CMGS")) == 2


def test_a_lasting_modem_error_is_logged_as_not_delivered(caplog):
    with SimulatedModem(pin=None, cms_errors=[330, 330, 330]) as modem:
        worker = Worker(SmsNotifier(sms_cfg(modem, pin="")), RetryPolicy(3, 0.05, 0.1))
        with caplog.at_level(logging.ERROR, logger="gateway.notify.dispatch"):
            run(worker, "+491701234567")
        assert modem.sms == [] and worker.failed == 1
        assert ("sms: alarm 7 (raised) to +491701234567: could not deliver after 3 attempts: "
                'AT+CMGS="+491701234567": +CMS ERROR: 330 (SMSC address unknown)') in caplog.text


def test_no_network_is_retried_not_sent(caplog):
    with SimulatedModem(pin=None, registered=False) as modem:
        worker = Worker(SmsNotifier(sms_cfg(modem, pin="")), RetryPolicy(2, 0.05, 0.1))
        run(worker, "+491701234567")
        assert modem.sms == [] and worker.failed == 1
        assert "not registered on a network (searching for a network)" in worker.failures[-1]["reason"]
        assert not any(d.startswith("AT+CMGS") for d in modem.dialogue)


def test_a_wrong_pin_is_sent_once_and_never_again(caplog):
    with SimulatedModem(pin="1234") as modem:
        worker = Worker(SmsNotifier(sms_cfg(modem, pin="4321")), RetryPolicy(5, 0.05, 0.1))
        with caplog.at_level(logging.ERROR):
            run(worker, "+491701234567", "+491709999999")
        assert modem.pin_tries == ["4321"]  # three wrong tries would lock the SIM
        assert modem.sms == [] and worker.failed == 2 and worker.retried == 0
        assert "the SIM refused the PIN" in caplog.text and "4321" not in caplog.text
        assert "not trying it again" in worker.failures[-1]["reason"]


def test_a_critical_alarm_in_the_gateway_reaches_the_phone(tmp_path):
    with SimulatedModem(pin="1234") as modem:
        path = write_config(tmp_path, base=small_bank(strings=1, cells=8), overrides={
            "alarms": {"rules": {"cell_temperature": {"high": {"warning": 30, "critical": 31}, "on_delay_s": 0}}},
            "notify": {"sms": sms_cfg(modem), "relay": {"enabled": False},
                       "routes": [{"name": "on-call", "severities": ["critical"], "clears": False,
                                   "recipients": {"sms": ["+491701234567"]}}]}})
        with GatewayThread(path) as gt:
            gw = gt.gateway
            gw.simulator.model.battery(1, 2).temp_offset += 10.0
            mgr = alarms.get_manager(gw)
            gt.wait_for(lambda: any(a.severity == "critical" for a in mgr.active()), timeout=10, what="alarm")
            gt.wait_for(lambda: len(modem.sms) == 1, timeout=10, what="SMS")
            number, text = modem.sms[0]
            assert number == "+491701234567"
            assert text.startswith("Battery room: CRITICAL: String 1 cell 2: temperature ")
            assert text.endswith("too high (alarm at 31.0 C)")
            # (the modem has the text before it answers +CMGS; the notifier counts it delivered after that answer)
            sms = notify.get_manager(gw).status
            gt.wait_for(lambda: sms()["notifiers"]["sms"]["delivered"] == 1, timeout=10, what="SMS counted delivered")
            assert sms()["notifiers"]["sms"]["failed"] == 0
