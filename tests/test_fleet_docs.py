"""The fleet roll-up examples in docs/examples are valid and work: promtool accepts the Prometheus configs
(the federation one also runs for real in test_prometheus.py), and the Mosquitto site bridge carries a
gateway's messages to the central broker over TLS with client certificates."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.mqtt_peers import Subscriber, make_pki, wait_port
from tests.support import GatewayThread, free_port, small_bank, write_config

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.mark.parametrize("name, flags", [("prometheus-site.yml", []), ("prometheus-central-federation.yml", []),
                                         ("prometheus-agent-remote-write.yml", ["--agent"])])
def test_promtool_accepts_the_prometheus_examples(name, flags):
    res = subprocess.run(["promtool", "check", "config", *flags, str(EXAMPLES / name)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def localise(text: str, replacements: dict[str, str]) -> str:
    """An example config with its production paths, hosts and ports replaced (mosquitto as root would
    otherwise drop to the mosquitto user, who cannot read a test's temp folder)."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the example"
        text = text.replace(old, new)
    return "user root\n" + text


def start_mosquitto(folder: Path, conf: str, port: int) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mosquitto.conf"
    path.write_text(conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
    except AssertionError:
        proc.kill()
        raise AssertionError(f"mosquitto -c {path} failed: {proc.stderr.read().decode()}") from None
    return proc


def test_site_bridge_carries_the_gateway_to_the_central_broker(tmp_path):
    pki = make_pki(tmp_path / "pki")
    central_port, site_port = free_port(), free_port()
    central_conf = localise((EXAMPLES / "mosquitto-central.conf").read_text(), {
        "/var/lib/mosquitto/": f"{tmp_path / 'central'}/",
        "listener 8883": f"listener {central_port} 127.0.0.1",
        "/etc/mosquitto/certs/sites-ca.pem": pki["ca"],
        "/etc/mosquitto/certs/central.pem": pki["server_cert"],
        "/etc/mosquitto/certs/central.key": pki["server_key"],
    })
    site_conf = localise((EXAMPLES / "mosquitto-site-bridge.conf").read_text(), {
        "/var/lib/mosquitto/": f"{tmp_path / 'site'}/",
        "listener 1883 127.0.0.1": f"listener {site_port} 127.0.0.1",
        "central.example.net:8883": f"127.0.0.1:{central_port}",
        "/etc/mosquitto/certs/central-ca.pem": pki["ca"],
        "/etc/mosquitto/certs/site-demo.pem": pki["client_cert"],
        "/etc/mosquitto/certs/site-demo.key": pki["client_key"],
    })
    assert not re.search(r"^\S+ [^#\n]*#", site_conf.replace("bmsgw/#", ""), re.M), "no comment after a value"
    central = start_mosquitto(tmp_path / "central", central_conf, central_port)
    site = None
    try:
        dashboard = Subscriber(central_port, client_id="central-dashboard",
                               tls={"ca_certs": pki["ca"], "certfile": pki["client_cert"],
                                    "keyfile": pki["client_key"]})
        dashboard.wait_connected()
        site = start_mosquitto(tmp_path / "site", site_conf, site_port)
        path = write_config(tmp_path, base=small_bank(strings=1, cells=4), overrides={
            "site": {"id": "demo"}, "prometheus": {"enabled": False},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": site_port, "interval_s": 0.3,
                     "reconnect_min_s": 1, "reconnect_max_s": 1}})
        with GatewayThread(path):
            dashboard.wait_for(lambda s: any(t == "bmsgw/demo/string/1/cells" for t, _, _ in s.snapshot()),
                               what="the gateway's data through the bridge")
        topics = {t for t, _, _ in dashboard.snapshot()}
        assert {"bmsgw/demo/status", "bmsgw/demo/string/1", "bmsgw/demo/bank"} <= topics
        dashboard.close()
    finally:
        for proc in (site, central):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=15)
