"""Power loss: a process running the gateway's real history writer and config saver, killed with SIGKILL at
random moments, and the checks made after each kill.

The child (run as a script)::

    python tests/powerloss.py STATE_DIR --t0 T0 [--seed N] [--first-version V]

* The history: ``HistoryDB`` + ``Recorder`` + ``HistoryWriter`` exactly as the history service sets them up
  (WAL, synchronous=FULL, the default roll-up tiers), fed with one batch per simulated second (8 cell
  voltages, 2 string currents) starting at ``T0``, flushed every few milliseconds.  Every commit the writer
  acknowledges (its ``on_flush``, called after COMMIT returned) is printed as
  ``ACK {"raw": [[t, sid], ...], "roll": [[sid, b], ...]}``.
* The config: ``configedit.atomic_write`` (the web page's save) of version after version of a YAML document,
  between ``SAVING v`` and ``SAVED v``.

The values are a function of the key (``expected_cell``, ``expected_current``), so whoever reopens the files
after a SIGKILL can check every acknowledged row to the value.

The parent side (``PowerLoss``: start, kill, verify) is used by tests/test_power_loss.py and
bench/power_loss.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import fsutil
from gateway.history.db import EPOCH, HistoryDB, decode_vector, encode_vector
from gateway.history.recorder import HistoryWriter, PointFilter, Recorder
from gateway.points import PointRef, PointSpec, Quality, Reading

CELLS = 8
STRINGS = 2
SPECS = {
    "cell.voltage": PointSpec("cell.voltage", "cell", "V", "", 0, scale=0.001),
    "string.current": PointSpec("string.current", "string", "A", "", 1, dtype="int16", scale=0.1),
}
DB_NAME = "history.sqlite"
CONFIG_NAME = "config.yaml"


def expected_cell(t: int, cell: int) -> int:
    """cell.voltage of ``cell`` in the raw slot starting at ``t``, in mV."""
    return 13000 + (t * 7 + cell * 13) % 1000


def expected_current(t: int, string: int) -> int:
    """string.current of ``string`` in the slot at ``t``, in 0.1 A."""
    return (t * 3 + string * 29) % 400 - 200


def config_text(version: int) -> str:
    """Version ``version`` of the config document: a few KB to some 100 KB, so a save takes a while."""
    rng = random.Random(version)
    rows = "".join(f"  - {{id: {i}, note: \"{'x' * rng.randint(10, 300)}\"}}\n" for i in range(rng.randint(5, 400)))
    return f"# saved by the power-loss child\nversion: {version}\nitems:\n{rows}"


def open_db(state: Path) -> HistoryDB:
    # raw samples kept forever here: the simulated time runs ahead and nothing may expire during the test
    return HistoryDB(state / DB_NAME, raw_retention_days=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("state", type=Path)
    ap.add_argument("--t0", type=int, required=True, help="simulated start time (unix s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first-version", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    args.state.mkdir(parents=True, exist_ok=True)
    out_lock = threading.Lock()

    def say(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def acked(rec: Recorder) -> None:
        c = rec.last_commit
        say("ACK " + json.dumps({"raw": c.raw, "roll": c.roll}, separators=(",", ":")))

    db = open_db(args.state)
    rec = Recorder(db, SPECS, PointFilter(["@measured"], []), raw_interval_s=1)
    writer = HistoryWriter(rec, flush_s=rng.uniform(0.005, 0.05), on_flush=acked)
    # the gateway takes its readings every 0.2 s (one wake-up per poll cycle); here commits come as often as the
    # flush period, so that kills land on every step of a commit, not on one commit per run
    writer.TAKE_S = writer.flush_s
    writer.start()

    config = args.state / CONFIG_NAME
    fsutil.remove_stale_temporaries(config.parent, config.name, min_age_s=0)  # as the web face does at start

    def saver() -> None:
        from gateway.outputs.web.configedit import atomic_write

        version = args.first_version
        while True:
            say(f"SAVING {version}")
            atomic_write(config, config_text(version))
            say(f"SAVED {version}")
            version += 1
            time.sleep(rng.uniform(0, 0.01))

    threading.Thread(target=saver, daemon=True).start()
    say("READY")
    t = args.t0
    while True:
        batch = [(PointRef("cell.voltage", 1, c), Reading(expected_cell(t, c) / 1000, Quality.GOOD, t + 0.5))
                 for c in range(1, CELLS + 1)]
        batch += [(PointRef("string.current", s), Reading(expected_current(t, s) / 10, Quality.GOOD, t + 0.5))
                  for s in range(1, STRINGS + 1)]
        writer.submit(batch)
        t += 1
        time.sleep(0.002)


# -- the parent: start, kill, check ------------------------------------------------------------------------------
@dataclass
class Tally:
    kills: int = 0
    acks: int = 0  # commits the writer acknowledged, all runs
    raw_rows: int = 0  # acknowledged raw rows, all present with their values after the last kill
    roll_rows: int = 0
    saves: int = 0  # config saves that returned
    checks: int = 0  # reopen-and-check rounds passed
    killed_mid_save: int = 0  # kills that landed between SAVING and SAVED


class PowerLoss:
    """Runs the child again and again in ``state``, kills it after a random delay, and checks the files."""

    def __init__(self, state: Path, seed: int = 0, max_delay_s: float = 0.6) -> None:
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.max_delay_s = max_delay_s
        now = int(time.time())
        self.t_next = now - 20 * 86400 - now % 86400  # simulated time starts 20 days ago (slots close at once)
        self.version_next = 1
        self.last_saved = 0  # newest version whose save returned
        self.acked_raw: dict[tuple[int, int], None] = {}
        self.acked_roll: set[tuple[int, int]] = set()
        self.tally = Tally()
        self._sids: dict[int, tuple[str, int | None]] = {}

    def cycle(self) -> None:
        """One start, a random wait, SIGKILL, and the checks."""
        out_path = self.state / "child.out"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, __file__, str(self.state), "--t0", str(self.t_next),
                                     "--seed", str(self.rng.randrange(1 << 30)),
                                     "--first-version", str(self.version_next)],
                                    stdout=out, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while b"READY" not in out_path.read_bytes():
                if proc.poll() is not None:
                    raise AssertionError(f"the child ended by itself: {proc.stderr.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError("the child did not start within 60 s")
                time.sleep(0.01)
            time.sleep(self.rng.uniform(0.0, self.max_delay_s))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, proc.returncode
        self.tally.kills += 1
        self._read(out_path.read_bytes())
        self.check()

    def _read(self, output: bytes) -> None:
        saving = None
        for line in output.decode(errors="replace").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "ACK":
                try:
                    ack = json.loads(rest)
                except ValueError:  # the kill cut the line: not an acknowledgement the parent got
                    continue
                self.tally.acks += 1
                for t, sid in ack["raw"]:
                    self.acked_raw[(t, sid)] = None
                self.acked_roll.update((sid, b) for sid, b in ack["roll"])
                if ack["raw"]:
                    self.t_next = max(self.t_next, max(t for t, _ in ack["raw"]) + 1)
            elif kind == "SAVING" and rest.isdigit():
                saving = int(rest)
                self.version_next = max(self.version_next, saving + 1)
            elif kind == "SAVED" and rest.isdigit():
                self.last_saved = max(self.last_saved, int(rest))
                self.tally.saves += 1
        if saving is not None and saving > self.last_saved:
            self.tally.killed_mid_save += 1
        self.t_next += 1000  # leave a gap: the slots a killed run held in memory were never acknowledged

    def check(self) -> None:
        """What a restart finds: an intact database with every acknowledged row, a whole config file."""
        db = sqlite3.connect(self.state / DB_NAME, timeout=30)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            for sid, point, string in db.execute("SELECT sid, point, string FROM series"):
                self._sids[sid] = (point, string)
            stored = {(t + EPOCH, sid): v for t, sid, v in db.execute("SELECT t, sid, v FROM raw")}
            missing = [k for k in self.acked_raw if k not in stored]
            assert not missing, f"{len(missing)} acknowledged raw rows lost, e.g. {missing[:5]}"
            wrong = [k for k in self.acked_raw if stored[k] != self._expected_blob(*k)]
            assert not wrong, f"{len(wrong)} acknowledged raw rows changed, e.g. {wrong[:3]}: " \
                              f"{[decode_vector(stored[k]) for k in wrong[:3]]}"
            rolls = {(sid, b): (n, v) for sid, b, n, v in db.execute("SELECT sid, b, n, v FROM roll_900")}
            lost = [k for k in self.acked_roll if k not in rolls]
            assert not lost, f"{len(lost)} acknowledged roll-up rows lost, e.g. {lost[:5]}"
            for n, v in rolls.values():
                vec = decode_vector(v)
                k = len(vec) // 3
                assert n > 0 and all(lo <= m <= hi for lo, m, hi in zip(vec[:k], vec[k:2 * k], vec[2 * k:], strict=True)
                                     if m is not None)
        finally:
            db.close()
        self._check_config()
        self.tally.raw_rows, self.tally.roll_rows = len(self.acked_raw), len(self.acked_roll)
        self.tally.checks += 1

    def _expected_blob(self, t: int, sid: int) -> bytes:
        point, _string = self._sids[sid]
        if point == "cell.voltage":
            return encode_vector([expected_cell(t, c) for c in range(1, CELLS + 1)])
        return encode_vector([expected_current(t, s) for s in range(1, STRINGS + 1)])

    def _check_config(self) -> None:
        path = self.state / CONFIG_NAME
        if not path.exists():
            assert self.last_saved == 0, "the config file is gone"
            return
        text = path.read_text()
        doc = yaml.safe_load(text)
        assert isinstance(doc, dict) and "version" in doc, f"the config file is torn: {text[:80]!r}"
        version = doc["version"]
        assert text == config_text(version), f"config version {version} is not the file that was saved (torn)"
        assert self.last_saved <= version < self.version_next, \
            f"config is version {version}; saved {self.last_saved}, newest attempted {self.version_next - 1}"
        bak = path.with_name(CONFIG_NAME + ".bak")
        if bak.exists():
            bak_text = bak.read_text()
            bak_version = yaml.safe_load(bak_text)["version"]
            assert bak_text == config_text(bak_version) and bak_version <= version
        leftovers = list(self.state.glob(f".{CONFIG_NAME}.*.tmp"))
        assert len(leftovers) <= 2, f"temporary files pile up: {leftovers}"


if __name__ == "__main__":
    sys.exit(main())
