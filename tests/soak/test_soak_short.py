"""The soak in brief (about 45 s): `bmsgw run` on the default 480-battery config with every face loaded at
once (20 Modbus TCP clients reading the whole map every second and mbpoll, snmpbulkwalk of the MIB, a real
Prometheus scraping, the web page's requests).  No poll cycle missed, no face error, memory flat after
warm-up.  bench/soak.py is the same for 10 minutes and more (tests/soak/load.py explains the figures)."""
from __future__ import annotations

from tests.soak.load import Plan, report, run

RSS_GROWTH_BOUND_MB = 20.0  # after warm-up, over ~15 s of load; a leak per request would show far above it


def test_every_face_at_once_misses_no_poll_cycle_and_keeps_memory_flat(tmp_path):
    plan = Plan(baseline_s=5, load_s=25, warmup_s=10, scrape_every_s=2, snmp_every_s=5, mbpoll_every_s=8,
                web_every_s=5, overview_every_s=10, sample_every_s=2, progress=False)
    r = run(plan, tmp_path)
    text = "\n".join(report(r))
    assert r.exit_code == 0, text
    assert not r.load_errors, text
    assert r.missed == 0 and r.short_cycles == 0, text
    assert all(b.cycles >= 4 for b in r.buses.values()), text
    for name in ("modbus", "mbpoll", "snmp", "prometheus", "web", "web-status"):
        face = r.faces[name]
        assert face.errors == 0 and face.ok > 0, f"{name}: {face.error_samples}\n{text}"
    assert r.modbus["passes"] >= plan.modbus_clients, text  # every client read the whole map at least once
    assert r.prometheus["scrapes"] >= 5 and r.prometheus["up"] == r.prometheus["scrapes"], text
    assert r.prometheus["missed_by_gateway"] and not any(r.prometheus["missed_by_gateway"].values()), text
    assert r.snmp_varbinds[1] >= 0.95 * r.snmp_varbinds[0] > 1000, text
    assert not r.log_problems, text
    assert r.rss_growth_mb < RSS_GROWTH_BOUND_MB, text
