"""The real alarm engine, history and analytics behind the faces that were built beside them:
acknowledge over Modbus and through the web's hooks, the alarm log in reports, history for trends."""
import time

import pytest
from pymodbus.client import ModbusTcpClient

from gateway.alarms import bmsgw_alarm_log
from gateway.commands import Principal, WriteDenied, WriteRejected
from gateway.points import PointRef
from tests.support import GatewayThread, free_port, small_bank, write_config


def test_alarm_acknowledge_over_modbus_and_web_history_and_report_log(tmp_path):
    mb_port = free_port()
    path = write_config(tmp_path, base=small_bank(1, 4), overrides={
        # ambient about 24 C: a warning setpoint at 10 C raises at once
        "alarms": {"rules": {"ambient_temperature": {"high": {"warning": 10.0, "critical": None},
                                                     "on_delay_s": 0}}},
        "modbus_tcp": {"listen": f"127.0.0.1:{mb_port}", "writes": {"enabled": True, "allow_from": ["127.0.0.1"]}},
    })
    with GatewayThread(path) as gt:
        gw = gt.gateway

        def ambient_alarm():
            rows = gw.pm.hook.bmsgw_alarms(gateway=gw, active=True, limit=50) or []
            return next((r for r in rows if r["point"] == "io.ambient_temperature"), None)

        gt.wait_for(lambda: ambient_alarm() is not None, timeout=30, what="the ambient alarm")
        row = ambient_alarm()
        assert row["severity"] == "warning" and row["threshold"] == 10.0 and row["acknowledged_by"] is None

        with ModbusTcpClient("127.0.0.1", port=mb_port) as client:
            assert client.write_register(9001 - 1, 7).exception_code == 3  # only 1 acknowledges
            assert not client.write_register(9000, 1).isError()
            assert client.write_register(9100, 99).exception_code == 3  # string 1 has batteries 1..4
            assert not client.write_register(9100, 2).isError()  # baseline reset of battery 2
        gt.wait_for(lambda: (ambient_alarm() or {}).get("acknowledged_by") == "modbus 127.0.0.1", timeout=10,
                    what="the Modbus acknowledgement")
        alice, ack = Principal("alice", "operator", "web"), PointRef("gateway.acknowledge_alarm")
        with pytest.raises(WriteRejected, match="no active alarm"):
            gw.write_from_thread(ack, 424242, alice)
        assert "acknowledged already" in gw.write_from_thread(ack, int(ambient_alarm()["id"]), alice)
        with pytest.raises(WriteDenied):
            gw.write_from_thread(ack, int(ambient_alarm()["id"]), Principal("eve", "viewer", "web"))

        now = time.time()
        samples = gw.pm.hook.bmsgw_history_query(gateway=gw, ref=PointRef("cell.voltage", 1, 1), start=now - 3600,
                                                 end=now + 60, max_points=100)
        assert isinstance(samples, list)  # history answers (empty until its first commit), not the web's buffer

    log = bmsgw_alarm_log(config=gw.config, start=0, end=time.time() + 1, string=1)
    assert any(r["point"] == "io.ambient_temperature" and r["severity"] == "warning" for r in log)
