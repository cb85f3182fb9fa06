"""Users, API tokens, sessions, CSRF tokens and login throttling for the web face.

- Users live in ``<state_dir>/web/users.json`` (written by the web page and by ``bmsgw user ...``) and,
  read-only, in the config's ``web.users`` (argon2 hashes).  There is no default user: the first admin is
  made with ``bmsgw user add`` or on the one-time /setup page, which only a browser on the controller
  itself can reach.
- Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile: 64 MiB, 3 passes).
- API tokens are 256-bit random strings shown once; only their SHA-256 is stored (a slow KDF adds nothing to
  a secret that cannot be guessed, and would cost a second of CPU per request on the controller).
- Sessions are kept in memory (a restart logs everybody out) and end after an idle time and a maximum age.
- CSRF tokens are HMAC-signed (itsdangerous) copies of the session id, or of a pre-login cookie.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ... import fsutil
from .settings import ROLES

log = logging.getLogger(__name__)

USERS_FILE = "users.json"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
TOKEN_PREFIX = "bmsgw_"
MAX_SESSIONS = 1000

_hasher = PasswordHasher()
# Verifying costs 64 MiB for a moment: at most two at once, so a burst of logins cannot exhaust the controller.
_kdf_slots = threading.BoundedSemaphore(2)


class AuthError(ValueError):
    """A user-facing problem with a user, password or token (the message says what)."""


def role_rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


def hash_password(password: str) -> str:
    check_password(password)
    with _kdf_slots:
        return _hasher.hash(password)


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
    try:
        with _kdf_slots:
            return _hasher.verify(pw_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


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
                self._dummy_hash = _hasher.hash(secrets.token_hex(8))
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
            for tid, t in self._data["tokens"].items():
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
    def __init__(self, idle_s: float, max_age_s: float) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> Session:
        now = time.time()
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
        now = time.time()
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
            value = self._s.loads(token, max_age=self.max_age_s)
        except BadSignature:
            return False
        return hmac.compare_digest(str(value), hashlib.sha256(binding.encode()).hexdigest())


class LoginThrottle:
    """Lock a (user, address) pair out for a while after too many failed logins."""

    def __init__(self, max_failures: int, lockout_s: float) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self._fails: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def locked(self, user: str, addr: str) -> float:
        """Seconds left of a lockout, 0 when the pair may try."""
        now = time.time()
        with self._lock:
            fails = [t for t in self._fails.get((user, addr), []) if now - t < self.lockout_s]
            if len(fails) >= self.max_failures:
                return self.lockout_s - (now - fails[-self.max_failures])
            return 0.0

    def failed(self, user: str, addr: str) -> None:
        now = time.time()
        with self._lock:
            if len(self._fails) > 10000:
                self._fails.clear()
            fails = [t for t in self._fails.get((user, addr), []) if now - t < self.lockout_s]
            fails.append(now)
            self._fails[(user, addr)] = fails[-self.max_failures:]

    def succeeded(self, user: str, addr: str) -> None:
        with self._lock:
            self._fails.pop((user, addr), None)
