"""A 4G/GSM modem on a serial port, driven with AT commands (3GPP TS 27.005/27.007) in SMS text mode.

The dialogue: ``AT`` (wake up), ``ATE0`` (no echo), ``AT+CMEE=1`` (numeric errors), ``AT+CPIN?`` and
``AT+CPIN="...."`` when the SIM asks for its PIN, ``AT+CMGF=1`` (text mode), ``AT+CSCS="GSM"``,
``AT+CREG?`` (registered on a network), then per message ``AT+CMGS="<number>"``, the ``> `` prompt, the text
and Ctrl-Z, and ``+CMGS: <reference>`` / ``OK``.  ``ERROR``, ``+CME ERROR: n`` and ``+CMS ERROR: n`` become
``ModemError`` with the code and its meaning.  A PIN the SIM refused is never sent again (three wrong PINs
lock the SIM until its PUK is entered).
"""
from __future__ import annotations

import contextlib
import logging
import re
import time

import serial

from .base import DeliveryError

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"

CME_ERRORS = {
    0: "phone failure", 3: "operation not allowed", 4: "operation not supported", 10: "SIM not inserted",
    11: "SIM PIN required", 12: "SIM PUK required", 13: "SIM failure", 14: "SIM busy", 15: "SIM wrong",
    16: "incorrect password", 17: "SIM PIN2 required", 18: "SIM PUK2 required", 30: "no network service",
    31: "network timeout", 32: "network not allowed, emergency calls only", 100: "unknown error",
}
CMS_ERRORS = {
    300: "ME failure", 301: "SMS service reserved", 302: "operation not allowed", 303: "operation not supported",
    304: "invalid PDU mode parameter", 305: "invalid text mode parameter", 310: "SIM not inserted",
    311: "SIM PIN required", 312: "PH-SIM PIN required", 313: "SIM failure", 314: "SIM busy", 315: "SIM wrong",
    316: "SIM PUK required", 320: "memory failure", 321: "invalid memory index", 322: "memory full",
    330: "SMSC address unknown", 331: "no network service", 332: "network timeout", 340: "no +CNMA expected",
    500: "unknown error",
}
# errors that waiting cannot fix: a wrong or locked SIM, a refused PIN
PERMANENT_CME = {10, 12, 13, 15, 16, 18}
PERMANENT_CMS = {310, 313, 315, 316}
_FINAL_ERROR = re.compile(r"^\+(CME|CMS) ERROR:\s*(.+)$")

# the GSM 03.38 default alphabet's printable ASCII, minus the characters that need the extension table
_GSM_SAFE = set(" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz\n")
_GSM_REPLACE = {"[": "(", "]": ")", "{": "(", "}": ")", "\\": "/", "^": "'", "~": "-", "|": "/", "`": "'",
                "°": "", "Ω": "Ohm", "–": "-", "—": "-", "’": "'", "“": '"', "”": '"', "\t": " ", "\r": ""}


class ModemError(DeliveryError):
    def __init__(self, message: str, code: int | None = None, kind: str = "", permanent: bool = False) -> None:
        super().__init__(message, permanent)
        self.code = code
        self.kind = kind  # CME | CMS | "" (plain ERROR) | timeout


def gsm_text(text: str, limit: int = 160) -> str:
    """``text`` in the characters an SMS in text mode can carry, at most ``limit`` of them."""
    out = "".join(ch if ch in _GSM_SAFE else _GSM_REPLACE.get(ch, "?") for ch in text)
    out = " ".join(out.split(" "))
    if len(out) > limit:
        out = out[: limit - 3].rstrip() + "..."
    return out


class Modem:
    def __init__(self, port: str, baud: int = 115200, pin: str = "", timeout_s: float = 5.0,
                 send_timeout_s: float = 60.0, check_network: bool = True) -> None:
        self.port = port
        self.baud = baud
        self.pin = pin
        self.timeout = timeout_s
        self.send_timeout = send_timeout_s
        self.check_network = check_network
        self.ser: serial.Serial | None = None
        self.pin_rejected = False
        self.ready = False

    # -- the port --------------------------------------------------------------------------------------------
    def open(self) -> None:
        self.close()
        try:
            self.ser = serial.Serial(self.port, self.baud, timeout=0.05, write_timeout=self.timeout)
        except (serial.SerialException, OSError) as exc:
            raise ModemError(f"cannot open {self.port}: {exc}") from None
        self.ready = False

    def close(self) -> None:
        if self.ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self.ser.close()
        self.ser = None
        self.ready = False

    def _open_port(self) -> serial.Serial:
        """The open port; ModemError when a failed read or write has closed it meanwhile."""
        if self.ser is None:
            raise ModemError(f"{self.port}: the port is closed")
        return self.ser

    def _write(self, data: bytes) -> None:
        ser = self._open_port()
        try:
            ser.write(data)
            ser.flush()
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise ModemError(f"{self.port}: write failed: {exc}") from None

    def _read_until(self, done, timeout: float, what: str) -> bytes:
        buf = b""
        deadline = time.monotonic() + timeout
        ser = self._open_port()
        while time.monotonic() < deadline:
            try:
                chunk = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError) as exc:
                self.close()
                raise ModemError(f"{self.port}: read failed: {exc}") from None
            if chunk:
                buf += chunk
                if done(buf):
                    return buf
        raise ModemError(f"{self.port}: no answer to {what} within {timeout:g} s", kind="timeout")

    # -- commands --------------------------------------------------------------------------------------------
    def command(self, cmd: str, timeout: float | None = None, label: str | None = None) -> list[str]:
        """Send one AT command; the information lines before ``OK`` (raises ``ModemError`` on an error).
        ``label`` names the command in errors instead of its text (a PIN must not reach the log)."""
        if self.ser is None:
            self.open()
        self._open_port().reset_input_buffer()
        self._write(cmd.encode("ascii") + b"\r")
        return self._final(label or cmd, timeout or self.timeout, echo=cmd)

    def _final(self, what: str, timeout: float, echo: str = "") -> list[str]:
        buf = self._read_until(_has_final, timeout, what)
        lines = [ln.strip() for ln in buf.decode("ascii", "replace").replace("\r", "\n").split("\n")]
        info: list[str] = []
        for ln in lines:
            if not ln or ln == (echo or what):  # blank, or the echo of the command
                continue
            if ln == "OK":
                return info
            if ln == "ERROR":
                raise ModemError(f"{what}: ERROR", kind="")
            m = _FINAL_ERROR.match(ln)
            if m:
                raise _error(what, m.group(1), m.group(2))
            info.append(ln)
        return info

    def initialise(self) -> None:
        """Wake the modem, unlock the SIM, select text mode, check the network."""
        if self.ser is None:
            self.open()
        for attempt in range(3):
            try:
                self.command("AT", timeout=min(self.timeout, 2.0))
                break
            except ModemError as exc:
                if attempt == 2:
                    raise ModemError(f"{self.port}: the modem does not answer AT: {exc}") from None
        self.command("ATE0")
        try:
            self.command("AT+CMEE=1")
        except ModemError:
            log.info("modem on %s does not take AT+CMEE=1; errors will be plain ERROR", self.port)
        self._unlock()
        self.command("AT+CMGF=1")
        try:
            self.command('AT+CSCS="GSM"')
        except ModemError:
            log.info("modem on %s does not take AT+CSCS; using its default character set", self.port)
        if self.check_network:
            self._registered()
        self.ready = True

    def _cpin(self) -> str:
        for ln in self.command("AT+CPIN?"):
            if ln.startswith("+CPIN:"):
                return ln.split(":", 1)[1].strip()
        raise ModemError("AT+CPIN?: no +CPIN line in the answer")

    def _unlock(self) -> None:
        state = self._cpin()
        if state == "READY":
            return
        if state == "SIM PIN":
            if self.pin_rejected:
                raise ModemError("the SIM refused the configured PIN before; not trying it again (fix "
                                 "notify.sms.pin and restart)", permanent=True)
            if not self.pin:
                raise ModemError("the SIM needs a PIN: set notify.sms.pin or pin_file", permanent=True)
            try:
                self.command(f'AT+CPIN="{self.pin}"', timeout=max(self.timeout, 10.0), label='AT+CPIN="****"')
            except ModemError as exc:
                if exc.code in (16, 12) or exc.kind == "":
                    self.pin_rejected = True
                    raise ModemError(f"the SIM refused the PIN ({exc}); not trying it again", exc.code, exc.kind,
                                     permanent=True) from None
                raise
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if self._cpin() == "READY":
                    log.info("modem on %s: SIM unlocked", self.port)
                    return
                time.sleep(0.2)
            raise ModemError("the SIM did not become ready after the PIN")
        if state in ("SIM PUK", "SIM PUK2"):
            raise ModemError("the SIM is locked: it needs its PUK (enter it in a phone)", permanent=True)
        raise ModemError(f"the SIM is not ready: +CPIN: {state}")

    def _registered(self) -> None:
        for ln in self.command("AT+CREG?"):
            if ln.startswith("+CREG:"):
                parts = [p.strip() for p in ln.split(":", 1)[1].split(",")]
                stat = parts[1] if len(parts) > 1 else parts[0]
                if stat in ("1", "5"):
                    return
                meaning = {"0": "not registered", "2": "searching for a network", "3": "registration denied",
                           "4": "unknown"}.get(stat, stat)
                raise ModemError(f"not registered on a network ({meaning})")
        raise ModemError("AT+CREG?: no +CREG line in the answer")

    def send_sms(self, number: str, text: str) -> int | None:
        """Send one SMS; returns the message reference the network gave it."""
        if not self.ready:
            self.initialise()
        cmd = f'AT+CMGS="{number}"'
        self._open_port().reset_input_buffer()
        self._write(cmd.encode("ascii") + b"\r")
        buf = self._read_until(lambda b: b">" in b or _has_final(b), self.timeout, cmd)
        if b">" not in buf:
            self._final_from(cmd, buf)
            raise ModemError(f"{cmd}: no > prompt")
        self._write(text.encode("ascii", "replace") + CTRL_Z)
        try:
            info = self._final(cmd, self.send_timeout)
        except ModemError as exc:
            if exc.kind == "timeout":
                self._write(ESC)  # abandon the half-sent message
                self.close()
            raise
        for ln in info:
            if ln.startswith("+CMGS:"):
                try:
                    return int(ln.split(":", 1)[1].strip())
                except ValueError:
                    return None
        return None

    def _final_from(self, what: str, buf: bytes) -> None:
        for ln in buf.decode("ascii", "replace").replace("\r", "\n").split("\n"):
            ln = ln.strip()
            if ln == "ERROR":
                raise ModemError(f"{what}: ERROR")
            m = _FINAL_ERROR.match(ln)
            if m:
                raise _error(what, m.group(1), m.group(2))


def _has_final(buf: bytes) -> bool:
    text = buf.decode("ascii", "replace").replace("\r", "\n")
    for ln in text.split("\n")[:-1]:  # complete lines only
        ln = ln.strip()
        if ln in ("OK", "ERROR") or _FINAL_ERROR.match(ln):
            return True
    return False


def _error(what: str, kind: str, raw: str) -> ModemError:
    raw = raw.strip()
    try:
        code = int(raw)
    except ValueError:
        return ModemError(f"{what}: +{kind} ERROR: {raw}", None, kind)
    table, permanent = (CME_ERRORS, PERMANENT_CME) if kind == "CME" else (CMS_ERRORS, PERMANENT_CMS)
    meaning = table.get(code, "unknown code")
    return ModemError(f"{what}: +{kind} ERROR: {code} ({meaning})", code, kind, permanent=code in permanent)
