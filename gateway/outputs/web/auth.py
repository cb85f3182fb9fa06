"""Users, API tokens, sessions, CSRF tokens and login throttling for the web face.

- Users live in ``<state_dir>/web/users.json`` (written by the web page and by ``bmsgw user ...``) and,
  read-only, in the config's ``web.users`` (argon2 hashes).  There is no default user: the first admin is
  made with ``bmsgw user add`` or on the one-time /setup page, which only a browser on the controller
  itself can reach.
- Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile: 64 MiB, 3 passes).
- API tokens are 256-bit random strings shown once; only their SHA-256 is stored (a slow KDF adds nothing to
  a secret that cannot be guessed, and would cost a second of CPU per request on the controller).
- Sessions are kept in memory (a restart logs everybody out) and end after an idle time and a maximum age.
- Failed logins are throttled per user and address, per address and per user; a browser that logged in
  before (a signed device cookie) is not held by the last two, so nobody can lock the admin out for good.
- CSRF tokens are HMAC-signed (itsdangerous) copies of the session id, or of a pre-login cookie.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ... import fsutil
from .schema import ROLES

if TYPE_CHECKING:
    from argon2 import PasswordHasher

log = logging.getLogger(__name__)

USERS_FILE = "users.json"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
TOKEN_PREFIX = "bmsgw_"
MAX_SESSIONS = 1000



@functools.cache
def _argon2() -> tuple[PasswordHasher, tuple[type[Exception], ...]]:
    """The password hasher and the errors of a failed check, loaded at the first password hashed or checked:
    argon2 and its cffi bindings are 2.5 MB a gateway that nobody logs into never needs."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    return PasswordHasher(), (VerifyMismatchError, VerificationError, InvalidHashError)


# Verifying costs 64 MiB for a moment: at most two at once, so a burst of logins cannot exhaust the controller.
_kdf_slots = threading.BoundedSemaphore(2)


class AuthError(ValueError):
    """A user-facing problem with a user, password or token (the message says what)."""


def role_rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


def hash_password(password: str) -> str:
    check_password(password)
    with _kdf_slots:
        return _argon2()[0].hash(password)


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AuthError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AuthError(f"password: at most {MAX_PASSWORD} characters")


def check_name(name: str) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= NAME_CHARS:
        raise AuthError("name: 1-64 characters of A-Z a-z 0-9 _ . @ -")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"role: one of {', '.join(ROLES)}")


def _verify(pw_hash: str, password: str) -> bool:
    hasher, failed = _argon2()
    try:
        with _kdf_slots:
            return hasher.verify(pw_hash, password)
    except failed:
        return False


def verify_password(pw_hash: str, password: str) -> bool:
    """Whether ``password`` matches an argon2 hash of ``bmsgw user hash`` (for the other faces' users: NUT ...);
    shares the web face's bound on concurrent checks."""
    return _verify(pw_hash, password)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    source: str  # "file" (editable) or "config" (read-only)

    def can(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role)


class UserStore:
    """The users file plus the config's users; re-read when another process (the CLI) changed the file."""

    def __init__(self, state_dir: Path, config_users: tuple[dict, ...] = ()) -> None:
        self.path = Path(state_dir) / "web" / USERS_FILE
        self.config_users = {u["name"]: u for u in config_users}
        self._lock = threading.RLock()
        self._data: dict = {"users": {}, "tokens": {}}
        self._mtime: float | None = None
        self._dummy_hash: str | None = None
        if self.path.parent.is_dir():
            fsutil.remove_stale_temporaries(self.path.parent, USERS_FILE)
        self._load()

    # -- file ------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._data, self._mtime = {"users": {}, "tokens": {}}, None
                return
            if self._mtime == st.st_mtime_ns:
                return
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                log.error("cannot read %s: %s; no user from it can log in", self.path, exc)
                data = {}
            self._data = {"users": dict(data.get("users") or {}), "tokens": dict(data.get("tokens") or {})}
            self._mtime = st.st_mtime_ns

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        fsutil.atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True), mode=0o600)
        self._mtime = self.path.stat().st_mtime_ns

    def refresh(self) -> None:
        self._load()

    # -- users -----------------------------------------------------------------------------------------------
    def users(self) -> list[User]:
        self._load()
        with self._lock:
            out = [User(n, u["role"], "file") for n, u in self._data["users"].items()]
        out += [User(n, u["role"], "config") for n, u in self.config_users.items() if n not in self._data["users"]]
        return sorted(out, key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        return next((u for u in self.users() if u.name == name), None)

    def has_users(self) -> bool:
        return bool(self.users())

    def add(self, name: str, role: str, password: str) -> User:
        check_name(name)
        check_role(role)
        pw_hash = hash_password(password)
        with self._lock:
            self._load()
            if name in self._data["users"] or name in self.config_users:
                raise AuthError(f"name: user {name!r} exists")
            self._data["users"][name] = {"role": role, "hash": pw_hash, "created": round(time.time())}
            self._save()
        log.info("user %s (%s) added", name, role)
        return User(name, role, "file")

    def _editable(self, name: str) -> dict:
        rec = self._data["users"].get(name)
        if rec is None:
            if name in self.config_users:
                raise AuthError(f"user {name!r} is declared in the config file (web.users); change it there")
            raise KeyError(name)
        return rec

    def set_password(self, name: str, password: str) -> None:
        pw_hash = hash_password(password)
        with self._lock:
            self._load()
            self._editable(name)["hash"] = pw_hash
            self._save()
        log.info("password of %s changed", name)

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        with self._lock:
            self._load()
            rec = self._editable(name)
            if rec["role"] == "admin" and role != "admin" and self._admins() <= 1:
                raise AuthError("role: the last admin cannot be demoted")
            rec["role"] = role
            self._save()
        log.info("role of %s set to %s", name, role)

    def delete(self, name: str) -> None:
        with self._lock:
            self._load()
            rec = self._editable(name)
            if rec["role"] == "admin" and self._admins() <= 1:
                raise AuthError("the last admin cannot be deleted")
            del self._data["users"][name]
            self._save()
        log.info("user %s deleted", name)

    def _admins(self) -> int:
        return sum(1 for u in self.users() if u.role == "admin")

    def authenticate(self, name: str, password: str) -> User | None:
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        self._load()
        with self._lock:
            rec = self._data["users"].get(name)
            if rec is not None:
                pw_hash, role, source = rec.get("hash", ""), rec.get("role", ""), "file"
            elif name in self.config_users:
                cu = self.config_users[name]
                pw_hash, role, source = cu["password_hash"], cu["role"], "config"
            else:
                pw_hash = None
        if pw_hash is None:
            # spend the same time as a real check, so the answer does not tell which names exist
            if self._dummy_hash is None:
                self._dummy_hash = _argon2()[0].hash(secrets.token_hex(8))
            _verify(self._dummy_hash, password)
            return None
        if not _verify(pw_hash, password):
            return None
        return User(name, role, source) if role in ROLES else None

    # -- API tokens ------------------------------------------------------------------------------------------
    def add_token(self, label: str, role: str) -> tuple[str, str]:
        """A new API token; returns (token id, the token itself: shown once, never stored)."""
        check_name(label)
        check_role(role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tid = secrets.token_hex(4)
        with self._lock:
            self._load()
            self._data["tokens"][tid] = {"label": label, "role": role, "sha256": _token_digest(token),
                                         "created": round(time.time())}
            self._save()
        log.info("API token %s (%s, %s) created", tid, label, role)
        return tid, token

    def tokens(self) -> list[dict]:
        self._load()
        with self._lock:
            return [{"id": tid, "label": t["label"], "role": t["role"], "created": t.get("created")}
                    for tid, t in sorted(self._data["tokens"].items())]

    def revoke_token(self, tid: str) -> None:
        with self._lock:
            self._load()
            if tid not in self._data["tokens"]:
                raise KeyError(tid)
            del self._data["tokens"][tid]
            self._save()
        log.info("API token %s revoked", tid)

    def check_token(self, token: str) -> User | None:
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = _token_digest(token)
        self._load()
        with self._lock:
            for t in self._data["tokens"].values():
                if hmac.compare_digest(t["sha256"], digest):
                    return User(f"token:{t['label']}", t["role"], "token") if t["role"] in ROLES else None
        return None


@dataclass(slots=True)
class Session:
    sid: str
    user: str
    role: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)


class SessionStore:
    def __init__(self, idle_s: float, max_age_s: float, clock=None) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.clock = clock or time.time
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> Session:
        now = self.clock()
        sess = Session(secrets.token_urlsafe(32), user.name, user.role, now, now)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                del self._sessions[oldest.sid]
            self._sessions[sess.sid] = sess
        return sess

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            sess = self._sessions.get(sid)
            if sess is None:
                return None
            if now - sess.last_seen > self.idle_s or now - sess.created > self.max_age_s:
                del self._sessions[sid]
                return None
            sess.last_seen = now
            return sess

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def drop_user(self, name: str) -> None:
        """End every session of a user (deleted, or password changed)."""
        with self._lock:
            for sid in [s.sid for s in self._sessions.values() if s.user == name]:
                del self._sessions[sid]

    def update_role(self, name: str, role: str) -> None:
        with self._lock:
            for s in self._sessions.values():
                if s.user == name:
                    s.role = role

    def _expire(self, now: float) -> None:
        for sid in [s.sid for s in self._sessions.values()
                    if now - s.last_seen > self.idle_s or now - s.created > self.max_age_s]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)


class Csrf:
    """Tokens bound to a session id (or a pre-login cookie) and signed with a per-process key."""

    def __init__(self, secret: bytes, max_age_s: float) -> None:
        self._s = URLSafeTimedSerializer(secret, salt="bmsgw-csrf")
        self.max_age_s = max_age_s

    def token(self, binding: str) -> str:
        return self._s.dumps(hashlib.sha256(binding.encode()).hexdigest())

    def valid(self, token: str | None, binding: str | None) -> bool:
        if not token or not binding or len(token) > 256:
            return False
        try:
            # itsdangerous compares max_age with the token's age; a float works (its stubs say int)
            value = self._s.loads(token, max_age=self.max_age_s)  # type: ignore[arg-type]
        except BadSignature:
            return False
        return hmac.compare_digest(str(value), hashlib.sha256(binding.encode()).hexdigest())


class LoginThrottle:
    """Failed logins, counted three ways in a sliding window of ``lockout_s`` seconds:

    - per user and client address (``max_failures``): somebody mistyping, or one address guessing one password;
    - per client address, any user (``max_failures_per_client``): one address trying many names;
    - per user, any address (``max_failures_per_user``): many addresses guessing one user's password.

    A browser that logged in as a user before shows a signed device cookie for that user (see ``DeviceKeys``);
    it is counted on its own (``max_failures`` per device) and not held by the per-user and per-client locks,
    so an attacker failing on purpose, from anywhere, can keep a name locked for strangers but cannot lock its
    owner out of a browser they have used before (OWASP: "slow down online guessing attacks with device
    cookies").  A refused attempt is not checked and not counted, so a lock ends ``lockout_s`` after the
    failures that caused it.  The table is bounded; when full, the entries that went longest without a failure
    go first, never all at once (which would hand an attacker a fresh budget).
    """

    MAX_KEYS = 20000

    def __init__(self, max_failures: int, lockout_s: float, max_failures_per_client: int | None = None,
                 max_failures_per_user: int | None = None, clock=None) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_failures_per_client = max_failures_per_client or 4 * max_failures
        self.max_failures_per_user = max_failures_per_user or 4 * max_failures
        self.clock = clock or time.time
        self._fails: OrderedDict[tuple, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, user: str, addr: str, device: str | None) -> list[tuple[tuple, int]]:
        if device is not None:
            return [(("device", user, device), self.max_failures)]
        return [(("pair", user, addr), self.max_failures), (("client", addr), self.max_failures_per_client),
                (("user", user), self.max_failures_per_user)]

    def locked(self, user: str, addr: str, device: str | None = None) -> float:
        """Seconds left of a lockout, 0 when this user may try from this address (or trusted device)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(user, addr, device):
                fails = [t for t in self._fails.get(key, ()) if now - t < self.lockout_s]
                if len(fails) >= limit:
                    wait = max(wait, self.lockout_s - (now - fails[-limit]))
        return wait

    def failed(self, user: str, addr: str, device: str | None = None) -> None:
        now = self.clock()
        with self._lock:
            for key, limit in self._keys(user, addr, device):
                fails = [t for t in self._fails.pop(key, ()) if now - t < self.lockout_s]
                fails.append(now)
                self._fails[key] = fails[-limit:]  # (re)inserted last: the most recent failure
            if len(self._fails) > self.MAX_KEYS:
                self._shrink(now)

    def _shrink(self, now: float) -> None:
        for key in [k for k, v in self._fails.items() if not v or now - v[-1] >= self.lockout_s]:
            del self._fails[key]
        while len(self._fails) > self.MAX_KEYS * 3 // 4:
            self._fails.popitem(last=False)

    def succeeded(self, user: str, addr: str, device: str | None = None) -> None:
        """A correct password clears the failures of this user from this address (or device) only: the
        per-client and per-user counts stay, or one good login would reset an attacker's budget."""
        with self._lock:
            self._fails.pop(("device", user, device) if device is not None else ("pair", user, addr), None)

    def __len__(self) -> int:
        return len(self._fails)


class DeviceKeys:
    """Signed device cookies: "this browser logged in as USER before".  The signing key is kept in the state
    folder (0600) so a restart does not turn every known browser into a stranger."""

    COOKIE = "bmsgw_device"
    KEY_FILE = "device.key"
    MAX_AGE_S = 180 * 86400

    def __init__(self, folder: Path) -> None:
        self._path = Path(folder) / self.KEY_FILE
        self._serializer: URLSafeTimedSerializer | None = None
        self._lock = threading.Lock()

    @property
    def _s(self) -> URLSafeTimedSerializer:
        # the key file is read or made at the first login, not when the face is built: `bmsgw check-config`
        # builds the faces and must leave no file behind
        with self._lock:
            if self._serializer is None:
                self._serializer = URLSafeTimedSerializer(_load_key(self._path), salt="bmsgw-device")
            return self._serializer

    def issue(self, user: str, device: str | None = None) -> str:
        return self._s.dumps({"u": user, "d": device or secrets.token_urlsafe(12)})

    def device(self, cookie: str | None, user: str) -> str | None:
        """The device id of a valid cookie issued to ``user``, else None."""
        if not cookie or len(cookie) > 512:
            return None
        try:
            data = self._s.loads(cookie, max_age=self.MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("u") != user or not isinstance(data.get("d"), str):
            return None
        return data["d"]


def _load_key(path: Path) -> bytes:
    """32 random bytes from ``path``, made (mode 0600, folder 0700) when missing or unusable."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        log.warning("%s is too short; making a new device key (browsers will log in as strangers once)", path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read %s (%s); device cookies last until the next restart", path, exc)
        return secrets.token_bytes(32)
    key = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fsutil.atomic_write(path, key, mode=0o600)
    except OSError as exc:
        log.warning("cannot save %s (%s); device cookies last until the next restart", path, exc)
    return key
