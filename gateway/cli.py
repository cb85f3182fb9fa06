"""``bmsgw``: run the gateway, poll once, simulate a bank, scan a bus, dump a device's registers, print the register
map, check a config."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from . import __version__
from .cliargs import add_config_option, config_path, offline_gateway
from .errors import GatewayError

log = logging.getLogger("gateway")

# The garbage collector's thresholds under `bmsgw run` (CPython's: 700, 10, 10).  A poll cycle's readings, batches
# and the faces' payloads are short-lived and freed by their reference counts, but each allocation counts towards
# the next collection of the youngest generation, which walks whatever is young at that moment (the readings of
# a batch on their way to the store): 0.5 ms every 1.4 s on the default bank, 0.04 % of a core with the middle
# generation's share; collected 14x less often, 0.01 %.  What was built at start-up is frozen (see
# Gateway.freeze_startup_objects), so the oldest generation stays cheap.
RUN_COLLECTOR_THRESHOLDS = (10_000, 20, 10)


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# -- commands ------------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    import gc

    from .app import Gateway
    from .libc import limit_malloc_arenas
    from .net.limits import raise_open_files_limit

    limit_malloc_arenas()  # before any thread starts (see gateway/libc.py)
    raise_open_files_limit()  # every face's connections (see there)
    gc.set_threshold(*RUN_COLLECTOR_THRESHOLDS)
    gw = Gateway(config_path(args))
    if not args.log_level:  # --log-level wins over the config
        logging.getLogger().setLevel(gw.config.data["gateway"]["log_level"])
    asyncio.run(gw.serve_forever())
    return 0


def cmd_check_config(args) -> int:
    from .app import ConfigProblems

    path = config_path(args)
    gw = offline_gateway(path)
    try:  # every check `bmsgw run` makes; nothing is built, opened or written
        gw.check()
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(f"bmsgw: {problem}", file=sys.stderr)
        return 2
    topo = gw.topology
    print(f"{path}: valid: {len(topo.strings)} strings, {topo.cell_count} batteries, {len(topo.devices)} devices "
          f"on {len(topo.buses)} buses, {len(gw.pointmap)} points, {len(gw.profiles)} profiles known")
    from .secretfiles import check_config

    for msg in check_config(gw):  # valid, but its secrets are readable by others: say so, exit 0
        print(f"warning: {msg}", file=sys.stderr)
    return 0


def cmd_poll(args) -> int:
    from .app import Gateway

    gw = Gateway(config_path(args))

    async def once():
        if gw.simulator is not None:
            gw.simulator.start()
        try:
            await gw.engine.poll_once(slow=True)
        finally:
            await gw.engine.stop()
            if gw.simulator is not None:
                gw.simulator.stop()

    asyncio.run(once())
    out = []
    for ref, reading in sorted(gw.store.snapshot().items(), key=lambda kv: _sort_key(gw, kv[0])):
        spec = gw.catalog[ref.point]
        item = {"point": ref.point, **ref.keys(), "value": reading.value, "unit": spec.unit,
                "quality": reading.quality.value, "ts": round(reading.ts, 3)}
        out.append(item)
    if args.json:
        json.dump(out, sys.stdout, indent=None if args.compact else 1)
        sys.stdout.write("\n")
    else:
        for item in out:
            keys = " ".join(f"{k}={item[k]}" for k in ("string", "cell", "channel") if k in item)
            value = "n/a" if item["value"] is None else f"{item['value']:.6g}"
            print(f"{item['point']:<32} {keys:<20} {value:>12} {item['unit']:<4} {item['quality']}")
    failed = [c["open_error"] for c in gw.engine.counters().values() if c["open_error"]]
    for msg in failed:
        print(f"bmsgw: {msg}", file=sys.stderr)
    return 1 if failed else 0


def _sort_key(gw, ref):
    entry = gw.pointmap.by_ref.get(ref)
    return (entry.address if entry else 1 << 20, str(ref))


def cmd_simulate(args) -> int:
    import signal
    import threading

    gw = offline_gateway(config_path(args))
    overrides: dict[str, Any] = {}  # Simulator keyword arguments
    if args.no_wire_time:
        overrides["wire_time"] = False
    if args.time_scale:
        overrides["time_scale"] = args.time_scale
    sim = gw.make_simulator(**overrides)
    try:
        for spec in args.fault or []:
            bus, addr, kind = _parse_fault(spec)
            try:
                sim.set_fault(bus, addr, kind)
            except (KeyError, ValueError) as exc:
                raise GatewayError(f"bad --fault {spec!r}: {exc}") from None
    except GatewayError:
        sim.stop()
        raise
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    sim.start()
    for name, path in sim.ports().items():
        n = len(sim.buses[name].devices)
        print(f"{name}: {path}  ({n} devices)", flush=True)
    print("simulating; Ctrl-C or SIGTERM to stop", file=sys.stderr, flush=True)
    try:
        while not done.wait(1):
            pass
    finally:
        sim.stop()
    return 0


def _parse_fault(spec: str) -> tuple[str, int | None, str]:
    try:
        where, kind = spec.split("=", 1)
        bus, _, addr = where.partition(":")
        return bus, int(addr) if addr else None, kind
    except ValueError:
        raise GatewayError(f"bad --fault {spec!r}: expected BUS[:ADDRESS]=KIND") from None


def cmd_scan(args) -> int:
    from .modbus.transport import RtuTransport
    from .profiles import PROFILES_DIR, load_profiles
    from .scan import config_fragment, parse_ids, scan_bus
    from .topology import BusConfig

    try:
        ids = parse_ids(args.ids)
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    if args.config:  # its plugin and profile folders too
        profiles = offline_gateway(args.config).profiles
    else:
        from .plugins import make_plugin_manager

        pm = make_plugin_manager()
        dirs = [PROFILES_DIR] + [d for r in pm.hook.bmsgw_profile_dirs() for d in (r or [])]
        profiles = load_profiles(dirs)
    bus = BusConfig(name=args.bus_name, port=args.port, baud=args.baud, parity=args.parity,
                    timeout_ms=args.timeout_ms, retries=0)
    tty = sys.stderr.isatty()

    def progress(n: int, total: int, found: int) -> None:
        if tty:
            print(f"\rscanning id {ids[n - 1]:>3} ({n}/{total}), found {found}", end="", file=sys.stderr, flush=True)
        elif n == total or n % max(1, total // 10) == 0:
            print(f"scanned {n}/{total} ids, found {found}", file=sys.stderr, flush=True)

    async def go():
        transport = RtuTransport(bus)
        try:
            transport.open()
        except Exception as exc:
            raise GatewayError(f"cannot open {args.port}: {exc}") from None
        try:
            return await scan_bus(transport, profiles, ids, progress)
        finally:
            transport.close()

    found = asyncio.run(go())
    if tty:
        print(file=sys.stderr)
    sys.stdout.write(config_fragment(found, bus))
    return 0 if found else 1


def _known_profiles(config: str | None) -> dict:
    """The profiles of ``config`` (its plugin and profile folders too), or the built-in and plugins' ones."""
    from .profiles import PROFILES_DIR, load_profiles

    if config:
        return offline_gateway(config).profiles
    from .plugins import make_plugin_manager

    pm = make_plugin_manager()
    return load_profiles([PROFILES_DIR] + [d for r in pm.hook.bmsgw_profile_dirs() for d in (r or [])])


def cmd_dump(args) -> int:
    from pathlib import Path

    from .dump import DumpError, default_case_name, dump_registers, parse_range, render_text, write_golden
    from .modbus.transport import RtuTransport
    from .topology import MAX_CELLS, BusConfig

    first, last = parse_range(args.range)
    if not 1 <= args.address <= 247:
        raise GatewayError(f"bad --address {args.address}: a Modbus RTU slave address is 1-247")
    for name, value, lo, hi in (("--timeout-ms", args.timeout_ms, 10, 10000), ("--retries", args.retries, 0, 10),
                                ("--cells", args.cells, 1, MAX_CELLS)):
        if not lo <= value <= hi:
            raise GatewayError(f"bad {name} {value}: {lo}-{hi}")
    profile = None
    if args.profile:
        profiles = _known_profiles(args.config)
        profile = profiles.get(args.profile)
        if profile is None:
            raise GatewayError(f"unknown --profile {args.profile!r}; known: {', '.join(sorted(profiles))}")
    bus = BusConfig(name="dump", port=args.port, baud=args.baud, parity=args.parity, stopbits=args.stopbits,
                    timeout_ms=args.timeout_ms, retries=args.retries)
    tty = sys.stderr.isatty()
    total = last - first + 1
    shown = [-1]

    def progress(result) -> None:
        done = len(result.words) + len(result.refused)
        if tty:
            print(f"\rreading {args.table} registers: {done}/{total}", end="", file=sys.stderr, flush=True)
        elif done == total or done * 10 // total > shown[0]:
            shown[0] = done * 10 // total
            print(f"read {done}/{total} registers ({len(result.refused)} refused)", file=sys.stderr, flush=True)

    async def go():
        transport = RtuTransport(bus)
        transport.open()  # PortError says what is wrong: missing, busy, no permission
        try:
            return await dump_registers(transport, args.address, args.table, first, last, args.retries, progress)
        finally:
            transport.close()

    try:
        result = asyncio.run(go())
        error = None
    except DumpError as exc:
        result, error = exc.result, exc
    if tty:
        print(file=sys.stderr)
    if result is not None and result.words:
        sys.stdout.write(render_text(result))
        if profile is not None:
            from .dump import expected_readings

            registers = {args.table: {str(a): w for a, w in result.words.items()}}
            in_table = {r.point for r in profile.registers if r.table == args.table}
            print(f"# decoded with profile {profile.name}:")
            for item in expected_readings(profile, registers, args.cells):
                if item["point"] not in in_table:
                    continue
                where = "".join(f" {k}={item[k]}" for k in ("cell", "channel") if k in item)
                value = "n/a" if item["value"] is None else f"{item['value']:.6g}"
                print(f"#   {item['point']}{where} = {value} {item.get('quality', '')}".rstrip())
        if args.json and error is None:
            path = Path(args.json)
            source = (f"bmsgw dump of address {args.address} on {args.port} at {args.baud} baud 8{args.parity}"
                      f"{args.stopbits}, {time.strftime('%Y-%m-%d %H:%M')}")
            doc = write_golden(path, result, source, args.case or default_case_name(result), profile, args.cells)
            print(f"wrote {path}: {len(result.words)} {args.table} registers"
                  + (f", {len(doc['cases'][-1]['expected'])} expected readings of {profile.name}" if profile
                     else "; add --profile NAME to fill in the readings they decode to"), file=sys.stderr)
    if error is not None:
        print(f"bmsgw: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_regmap(args) -> int:
    from .regmap import render

    gw = offline_gateway(config_path(args))
    sys.stdout.write(render(gw.pointmap, args.format))
    return 0


# -- parser --------------------------------------------------------------------------------------------------
def build_parser(pm=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmsgw",
        description="Battery monitoring gateway: polls RS485 battery sensors and serves the bank over "
                    "Modbus TCP, SNMP, Prometheus, REST and MQTT.")
    p.add_argument("--version", action="version", version=f"bmsgw {__version__}")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("run", help="run the gateway (polling and every configured face) until stopped")
    add_config_option(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("poll", help="poll every sensor once and print the readings")
    add_config_option(s)
    s.add_argument("--once", action="store_true", default=True, help="one full scan (the only mode; kept for clarity)")
    s.add_argument("--json", action="store_true", help="print a JSON array, one object per reading")
    s.add_argument("--compact", action="store_true", help="with --json: on one line")
    s.set_defaults(func=cmd_poll)

    s = sub.add_parser("simulate", help="run the simulated bank on pseudo-terminals and print their paths",
                       description="Start the built-in simulator for every bus of the config (whatever its port) "
                                   "and print one line per bus: NAME: /dev/pts/N. Point any Modbus RTU tool at them.")
    add_config_option(s)
    s.add_argument("--no-wire-time", action="store_true", help="answer at once instead of at the baud rate's pace")
    s.add_argument("--time-scale", type=float, default=None, help="simulated seconds per real second")
    s.add_argument("--fault", action="append", metavar="BUS[:ADDR]=KIND",
                   help="inject a fault: no_answer, crc_error, garbage, slow; BUS=unplugged for a whole bus")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("scan", help="find and identify the sensors on a bus; prints a config fragment",
                       description="Ask every id for its identity registers and print a YAML fragment ready to "
                                   "paste into the config. Progress goes to stderr.")
    s.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyS1")
    s.add_argument("--baud", type=int, default=9600,
                   choices=[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200])
    s.add_argument("--parity", default="N", choices=["N", "E", "O"])
    s.add_argument("--ids", default="1-247", help="ids to try, e.g. 1-247 or 1-10,200 (default 1-247)")
    s.add_argument("--timeout-ms", type=int, default=100, help="wait this long for each answer (default 100)")
    s.add_argument("--bus-name", default="bus1", help="name to give the bus in the fragment")
    s.add_argument("--config", "-c", default=None, help="config whose profile folders to use (optional)")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser(
        "dump", help="print a device's raw registers (hex and decimal); --json writes a profile's golden test",
        description="Read a range of one device's input or holding registers through the gateway's RTU transport "
                    "(requests of at most 125 registers; a range the device partly refuses is narrowed down to "
                    "what it maps) and print them. Progress goes to stderr. Exit 0 when registers were read, 1 "
                    "when the device is silent, refuses or fails, 2 for a bad argument or a port that cannot be "
                    "opened (missing, busy, no permission). See docs/sensors.md.")
    s.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyS1 or /dev/ttyUSB0")
    s.add_argument("--baud", type=int, default=9600,
                   choices=[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200])
    s.add_argument("--parity", default="N", choices=["N", "E", "O"])
    s.add_argument("--stopbits", type=int, default=1, choices=[1, 2])
    s.add_argument("--address", type=int, required=True, help="the device's Modbus address (slave id), 1-247")
    s.add_argument("--table", default="input", choices=["input", "holding"],
                   help="input registers (function 04, default) or holding registers (function 03)")
    s.add_argument("--range", default="0-124", help="registers FIRST-LAST to read (default 0-124)")
    s.add_argument("--timeout-ms", type=int, default=300, help="wait this long for each answer (default 300)")
    s.add_argument("--retries", type=int, default=2, help="ask again this often after no answer (default 2)")
    s.add_argument("--json", metavar="FILE", default=None,
                   help="also write the registers in the golden-test format (tests/devicedump.py); an existing "
                        "file gets them added (run once per table)")
    s.add_argument("--profile", default=None,
                   help="decode the registers with this profile: printed, and written to --json as the expected "
                        "readings")
    s.add_argument("--cells", type=int, default=1, help="with --profile of a concentrator: batteries it serves")
    s.add_argument("--case", default=None, help="the --json case's name (default: 'dump of address A on DATE')")
    s.add_argument("--config", "-c", default=None, help="config whose profile folders to use (optional)")
    s.set_defaults(func=cmd_dump)

    s = sub.add_parser("regmap", help="print the Modbus register map (with OIDs, metric names, JSON paths)")
    add_config_option(s)
    s.add_argument("--format", default="md", choices=["csv", "json", "md"])
    s.set_defaults(func=cmd_regmap)

    s = sub.add_parser("check-config", help="validate a configuration; exit 0 when valid, 2 with the reason when not")
    add_config_option(s)
    s.set_defaults(func=cmd_check_config)

    if pm is not None:
        pm.hook.bmsgw_cli_commands(subparsers=sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .plugins import make_plugin_manager

    _setup_logging()
    try:
        pm = make_plugin_manager()
    except GatewayError:
        pm = None
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    if args.log_level:
        logging.getLogger().setLevel(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except GatewayError as exc:
        print(f"bmsgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
