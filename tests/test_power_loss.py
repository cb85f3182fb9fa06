"""Power loss and a full disk: what the gateway wrote before a SIGKILL is still there, whole.

* Kills: the real history writer and config saver in a child process (tests/powerloss.py), SIGKILLed at
  random moments, again and again; after each kill the database passes ``PRAGMA integrity_check``, holds every
  row the writer acknowledged (to the value), and the config file is a whole version, never a torn one.
* Full disk: the history's folder on a tiny tmpfs (real ENOSPC) and, everywhere, the ``history.max_size_mb``
  cap (the same SQLITE_FULL path): the history storage alarm is raised in the active table and through
  ``bmsgw_alarm_event`` (SNMP traps, MQTT), polling and the faces go on, writing resumes when there is room
  and the alarm clears.
* ``gateway.fsutil``: the one way the gateway replaces a file.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from gateway import fsutil
from gateway.history import history_for, service_for
from gateway.history.db import EPOCH, HistoryDB, encode_vector, is_disk_full
from gateway.history.recorder import FAULT_ERROR, FAULT_OK, HistoryWriter, PointFilter, Recorder
from gateway.hookspecs import hookimpl
from gateway.outputs.web.configedit import read_document, save_and_reload
from gateway.points import PointRef, PointSpec, Quality, Reading
from tests.powerloss import PowerLoss
from tests.support import GatewayThread, small_bank, write_config

KILLS = 30
KILL_BUDGET_S = 40.0


# -- fsutil ----------------------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_files_and_keeps_the_mode(tmp_path):
    p = tmp_path / "state.json"
    fsutil.atomic_write(p, '{"a": 1}')
    assert p.read_text() == '{"a": 1}' and p.stat().st_mode & 0o777 == 0o644 & ~_umask()
    os.chmod(p, 0o600)
    fsutil.atomic_write(p, b'{"a": 2}', backup=True)
    assert p.read_bytes() == b'{"a": 2}' and p.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state.json.bak").read_text() == '{"a": 1}'
    assert (tmp_path / "state.json.bak").stat().st_mode & 0o777 == 0o600
    fsutil.atomic_write(p, "x", mode=0o640)
    assert p.stat().st_mode & 0o777 == 0o640
    with fsutil.atomic_open(tmp_path / "report.csv", "w") as fh:
        fh.write("a,b\n")
    assert (tmp_path / "report.csv").read_text() == "a,b\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report.csv", "state.json", "state.json.bak"]


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "users.json"
    fsutil.atomic_write(p, "old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as err:
        fsutil.atomic_write(p, "new" * 1000)
    assert err.value.errno == errno.ENOSPC
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["users.json"]
    with pytest.raises(RuntimeError), fsutil.atomic_open(p, "w") as fh:
        fh.write("half")
        raise RuntimeError("the producer failed")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["users.json"]


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    stale = tmp_path / ".config.yaml.abc123.tmp"
    fresh = tmp_path / ".config.yaml.bak.def456.tmp"
    other = tmp_path / ".other.yaml.x.tmp"
    for f in (stale, fresh, other):
        f.write_text("half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert fsutil.remove_stale_temporaries(tmp_path, "config.yaml") == 1  # the fresh one may be a live save
    assert not stale.exists() and fresh.exists() and other.exists()


# -- the history writer's acknowledgement and its full-disk behaviour ---------------------------------------------
SPECS = {"cell.voltage": PointSpec("cell.voltage", "cell", "V", "", 0, scale=0.001)}
T0 = 1_790_000_000


def _batch(t: int, cells: int = 4) -> list:
    return [(PointRef("cell.voltage", 1, c), Reading(13.0 + c / 1000, Quality.GOOD, t + 0.5))
            for c in range(1, cells + 1)]


def test_rows_wait_bounded_while_the_disk_is_full_and_the_commit_says_what_is_on_disk(tmp_path, monkeypatch):
    db = HistoryDB(tmp_path / "h.sqlite", raw_retention_days=0)
    rec = Recorder(db, SPECS, PointFilter(["@measured"], []), raw_interval_s=1, max_pending_rows=5)
    real_write = db.write

    def full(*a, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "write", full)
    for k in range(12):
        rec.add(_batch(T0 + k))
        with pytest.raises(sqlite3.OperationalError):
            rec.flush(T0 + k + 1)
    # twelve one-second slots closed, five kept (the newest), seven dropped and counted
    assert rec.pending_rows == 5 and rec.values_dropped == 7 * 4 and rec.commits == 0 and rec.last_commit is None
    monkeypatch.setattr(db, "write", real_write)
    assert rec.flush(T0 + 13) == 5 * 4
    c = rec.last_commit
    assert c.seq == 1 and c.values == 20 and [t for t, _ in c.raw] == list(range(T0 + 7, T0 + 12))
    stored = [t + EPOCH for (t,) in db.conn().execute("SELECT t FROM raw ORDER BY t")]
    assert stored == list(range(T0 + 7, T0 + 12))


def test_a_series_the_full_disk_would_not_let_be_made_keeps_its_readings_and_the_batchs_others(tmp_path,
                                                                                             monkeypatch):
    """The first reading of a family not recorded before (a new sensor type) needs a series row; on a full disk
    that insert fails.  The batch it came in was once lost with it, every batch again until there was room."""
    specs = {**SPECS, "cell.temperature": PointSpec("cell.temperature", "cell", "°C", "", 0, scale=0.1)}
    db = HistoryDB(tmp_path / "h.sqlite", raw_retention_days=0)
    rec = Recorder(db, specs, PointFilter(["@measured"], []), raw_interval_s=1)
    rec.add(_batch(T0))
    assert rec.flush(T0 + 1) == 4  # the voltages' series is made and written
    real_series_for, real_write = db.series_for, db.write

    def full(*a, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "series_for", full)
    monkeypatch.setattr(db, "write", full)
    temps = [(PointRef("cell.temperature", 1, c), Reading(25.0 + c / 10, Quality.GOOD, T0 + 1.5)) for c in (1, 2)]
    rec.add(temps + _batch(T0 + 1))  # (the voltages after the new family, in the same batch)
    with pytest.raises(sqlite3.OperationalError):
        rec.flush(T0 + 2)
    rec.add(_batch(T0 + 2))
    monkeypatch.setattr(db, "series_for", real_series_for)
    monkeypatch.setattr(db, "write", real_write)
    assert rec.flush(T0 + 3) == 2 + 4 + 4  # the temperatures, and the voltages of both slots
    assert {s.point for s in db.all_series()} == {"cell.voltage", "cell.temperature"}
    temp = db.query("cell.temperature", 1, 1, start=T0, end=T0 + 3, resolution="raw", now=T0 + 3)
    volt = db.query("cell.voltage", 1, 4, start=T0, end=T0 + 3, resolution="raw", now=T0 + 3)
    assert temp.t == [T0 + 1] and temp.mean == [pytest.approx(25.1)] and temp.unit == "°C"
    assert volt.t == [T0, T0 + 1, T0 + 2] and volt.mean == [pytest.approx(13.004)] * 3


def test_series_made_one_by_one_as_room_comes_back_keep_every_reading(tmp_path, monkeypatch):
    """Two new families wait for their series on a full disk; the next flush can make the first but not the
    second (the disk filled again), and a third family comes meanwhile.  Each reading lands in its own
    series once there is room."""
    specs = {**SPECS, "cell.temperature": PointSpec("cell.temperature", "cell", "°C", "", 0, scale=0.1),
             "cell.ohmic": PointSpec("cell.ohmic", "cell", "ohm", "", 0, scale=1e-6),
             "cell.emf": PointSpec("cell.emf", "cell", "V", "", 0, scale=0.001)}
    db = HistoryDB(tmp_path / "h.sqlite", raw_retention_days=0)
    rec = Recorder(db, specs, PointFilter(["*"], []), raw_interval_s=1)
    real_series_for = db.series_for
    room = {"series": 0}

    def series_for(*a, **kw):
        if room["series"] <= 0:
            raise sqlite3.OperationalError("database or disk is full")
        room["series"] -= 1
        return real_series_for(*a, **kw)

    def reading(point: str, value: float, t: float) -> list:
        return [(PointRef(point, 1, 1), Reading(value, Quality.GOOD, t))]

    monkeypatch.setattr(db, "series_for", series_for)
    rec.add(reading("cell.temperature", 25.5, T0 + 0.5) + reading("cell.ohmic", 0.0021, T0 + 0.5))
    room["series"] = 1  # the first series can be made, then the disk is full again
    with pytest.raises(sqlite3.OperationalError):
        rec.flush(T0 + 1)
    rec.add(reading("cell.emf", 2.15, T0 + 1.5))
    room["series"] = 10
    rec.flush(T0 + 2)
    assert {s.point for s in db.all_series()} == {"cell.temperature", "cell.ohmic", "cell.emf"}
    for point, value in (("cell.temperature", 25.5), ("cell.ohmic", 0.0021), ("cell.emf", 2.15)):
        got = db.query(point, 1, 1, start=T0, end=T0 + 2, resolution="raw", now=T0 + 2)
        assert got.mean == [pytest.approx(value, rel=1e-3)], (point, got.t, got.mean)


def test_sqlite_full_inside_a_transaction_is_reported_not_hidden_by_the_rollback(tmp_path):
    db = HistoryDB(tmp_path / "h.sqlite", raw_retention_days=0)
    db.write([(T0, 1, encode_vector([1, 2]))])
    db.set_max_bytes(1)  # no page beyond the current size
    big = [(T0 + k, 1, encode_vector(list(range(1000)))) for k in range(1, 50)]
    with pytest.raises(sqlite3.OperationalError) as err:
        db.write(big)
    assert is_disk_full(err.value) and not db.conn().in_transaction
    db.set_max_bytes(None)
    db.write(big)  # the same connection writes again once there is room
    assert db.conn().execute("SELECT count(*) FROM raw").fetchone()[0] == 50


def test_the_writer_opens_the_database_when_it_can_and_reports_the_fault_meanwhile(tmp_path):
    faults, acks = [], []
    attempts = []

    def opener():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise sqlite3.OperationalError("disk I/O error")  # what a WAL file on a full card says at open
        return Recorder(HistoryDB(tmp_path / "h.sqlite", raw_retention_days=0), SPECS,
                        PointFilter(["@measured"], []), raw_interval_s=1)

    w = HistoryWriter(None, flush_s=0.05, opener=opener, open_error=sqlite3.OperationalError("disk I/O error"),
                      on_fault=lambda f, e: faults.append(f), on_flush=lambda r: acks.append(r.last_commit))
    w.start()
    try:
        deadline = time.monotonic() + 30
        while w.recorder is None and time.monotonic() < deadline:
            w.submit(_batch(T0))
            time.sleep(0.01)
        assert w.recorder is not None and faults[0] == FAULT_ERROR and faults[-1] == FAULT_OK
        assert w.dropped > 0  # what came while there was no database was counted, not hoarded
        w.submit(_batch(T0 + 100))
        assert w.flush(30) and w.flush(30)
        while not acks and time.monotonic() < deadline:
            w.flush(30)
        assert acks and acks[-1].raw
    finally:
        w.stop()


# -- SIGKILL at random moments -----------------------------------------------------------------------------------
def test_sigkill_during_history_writes_and_config_saves_loses_nothing_acknowledged(tmp_path):
    run = PowerLoss(tmp_path / "state", seed=20260110)
    started = time.monotonic()
    # (until one kill at least landed in the middle of a config save)
    while (run.tally.kills < KILLS or not run.tally.killed_mid_save) and time.monotonic() - started < KILL_BUDGET_S:
        run.cycle()  # start, random wait, SIGKILL, reopen and check everything acknowledged so far
    t = run.tally
    print(f"power loss: {t.kills} kills, {t.acks} commits acknowledged, {t.raw_rows} raw + {t.roll_rows} roll-up "
          f"rows verified, {t.saves} config saves, {t.killed_mid_save} kills during a save")
    assert t.kills >= 15 and t.checks == t.kills
    assert t.acks >= t.kills and t.raw_rows > 1000 and t.roll_rows > 0 and t.saves > t.kills
    assert t.killed_mid_save >= 1  # the kills did land while the config was being written


# -- a full disk --------------------------------------------------------------------------------------------------
class AlarmEvents:
    """A plugin that records ``bmsgw_alarm_event`` calls: what the SNMP trap and MQTT notifiers receive."""

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def bmsgw_alarm_event(self, gateway, event) -> None:
        self.events.append(event)


def _tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system ``folder`` is on."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def _history_alarm(gw):
    from gateway import alarms

    return [a for a in alarms.get_manager(gw).active() if a.key.point == "gateway.history_fault"]


def _started(path: Path) -> tuple[GatewayThread, AlarmEvents]:
    events = AlarmEvents()
    gt = GatewayThread(path)
    gt.gateway.pm.register(events, name=f"events-{uuid.uuid4().hex}")
    return gt.start(), events


def _writes(gw) -> float:
    return gw.store.value(PointRef("gateway.history_writes")) or 0


def _full(gt: GatewayThread, events: AlarmEvents):
    """The history storage alarm is up, everywhere it should be, and the gateway goes on; returns it."""
    gw = gt.gateway
    gt.wait_for(lambda: _history_alarm(gw), timeout=60, what="the history storage alarm")
    alarm = _history_alarm(gw)[0]
    assert alarm.severity == "critical" and "history cannot be written (a full disk)" in alarm.text, alarm.text
    assert gw.store.value(PointRef("gateway.history_fault")) == 1  # Modbus, SNMP, Prometheus, REST read this
    assert any(e.active and e.alarm_id == alarm.alarm_id for e in events.events)  # SNMP trap, MQTT, e-mail
    st = gw.status()["history"]
    assert st["fault"] == "disk full" and "full" in st["last_error"]
    cycles = gw.store.value(PointRef("gateway.poll_cycles"))
    gt.wait_for(lambda: gw.store.value(PointRef("gateway.poll_cycles")) > cycles + 3, what="polling")
    an = gw.service("analytics")
    ticks, errors = an.engine.last_tick, an.errors
    gt.wait_for(lambda: an.engine.last_tick > ticks + 1, what="analytics going on")
    assert an.errors == errors
    return alarm


def _room_again(gt: GatewayThread, events: AlarmEvents, alarm, frozen: float, since: float | None = None) -> None:
    """The alarm clears and history is written again, with battery 3's readings since ``since`` (default: the
    last 10 minutes)."""
    gw = gt.gateway
    gt.wait_for(lambda: not _history_alarm(gw), timeout=60, what="the alarm to clear")
    assert gw.store.value(PointRef("gateway.history_fault")) == 0
    gt.wait_for(lambda: _writes(gw) > frozen, what="history written again")
    assert any(not e.active and e.alarm_id == alarm.alarm_id for e in events.events)
    assert gw.status()["history"]["fault"] == "ok"
    assert len(_recent_voltages(gw, since)) > 0, "what was kept in memory during the outage is written"


def _recent_voltages(gw, since: float | None = None):
    now = time.time()
    start = now - 600 if since is None else since
    return history_for(gw).query("cell.voltage", 1, 3, start=start, end=now + 5, resolution="raw")


def _full_disk_scenario(tmp_path, how: str) -> None:
    disk = tmp_path / "disk"
    overrides = {"history": {"flush_s": 0.2, "raw": {"interval_s": 1}},
                 "alarms": {"enabled": True}, "analytics": {"interval_s": 0.5}}
    strings, cells = 1, 60
    mounted = how == "tmpfs" and _tmpfs(disk, "3m")
    if mounted:
        # the whole state folder (history, alarm log, analytics, web users) on the small disk
        overrides["gateway"] = {"state_dir": str(disk / "var")}
    elif how == "tmpfs":
        how = "cap"  # no permission to mount here: the same SQLITE_FULL path through the size cap
    if how == "cap":  # history.max_size_mb: as small as the empty database, full a few seconds after the start
        overrides["history"]["max_size_mb"] = 0.03
        strings, cells = 2, 120
    path = write_config(tmp_path, base=small_bank(strings=strings, cells=cells), overrides=overrides)
    try:
        gt, events = _started(path)
        try:
            gw = gt.gateway
            gt.wait_for(lambda: _writes(gw) > 0 or how == "cap", what="history written")
            if how == "tmpfs":
                # the battery's series made before the disk fills: a series cannot be made on a full disk (the
                # readings that would make it are lost), so its rows would not be among those kept in memory
                gt.wait_for(lambda: len(_recent_voltages(gw)) > 0, what="battery 3's series written")
            db_file = service_for(gw).db.path
            filled = time.time()
            filler = _fill(disk) if how == "tmpfs" else None
            alarm = _full(gt, events)
            frozen = _writes(gw)
            gt.wait_for(lambda: gw.status()["history"]["pending_rows"] > 0, what="rows waiting in memory")
            # room again: what waited in memory is written, the alarm clears
            if how == "tmpfs":
                filler.unlink()
            else:  # the operator lifts the cap on the config page: saved, reloaded, applied while running
                doc = read_document(gw)
                doc["history"]["max_size_mb"] = 0
                assert "history" in save_and_reload(gw, doc, "admin")["changed"]
            _room_again(gt, events, alarm, frozen, since=filled if how == "tmpfs" else None)
        finally:
            gt.stop()
        if how == "tmpfs":
            # a restart on a full card (the power came back): it starts, polls, serves and says why
            filler = _fill(disk)
            gt, events = _started(path)
            try:
                alarm = _full(gt, events)
                an = gt.gateway.service("analytics")
                assert an.state.exclusive  # its file opened for the gateway alone: no room for the WAL index
                filler.unlink()
                _room_again(gt, events, alarm, _writes(gt.gateway))
                gt.wait_for(lambda: not an.state.exclusive, what="the analytics state shared again")
            finally:
                gt.stop()
        ro = HistoryDB(db_file, readonly=True)
        assert ro.conn().execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ro.close()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_raises_the_history_alarm_and_polling_goes_on(tmp_path):
    """A real ENOSPC: the state folder on a 3 MB tmpfs filled to the last byte, then freed; then a restart on the
    full card."""
    _full_disk_scenario(tmp_path, "tmpfs")


def test_history_size_cap_behaves_like_a_full_disk(tmp_path):
    """``history.max_size_mb`` reached: the same alarm; lifting the cap on the config page (saved, reloaded
    while running) lets the waiting rows in."""
    _full_disk_scenario(tmp_path, "cap")
