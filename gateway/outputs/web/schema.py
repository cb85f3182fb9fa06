"""The ``web`` config section: its JSON Schema and a typed view of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config import parse_listen
from ...errors import ConfigError
from ...net.limits import Limits, limits_from_section, with_network_keys

ROLES = ("viewer", "operator", "admin")
ARGON2_PREFIX = "$argon2"

# what one client may hold of the web server (gateway.net): slow, silent and greedy clients
DEFAULT_LIMITS = Limits(max_connections=100, max_connections_per_address=16, idle_timeout_s=30,
                        request_timeout_s=15, send_timeout_s=30, max_request_bytes=512 * 1024)
# keys of earlier versions, still read: api.max_body_kib is limits.max_request_bytes now; limits.slow_per_address
# bounded cheroot's worker threads, which requests no longer hold while they arrive (ignored)
LEGACY_LIMIT_KEYS = {"api.max_body_kib": "max_request_bytes"}
IGNORED_LIMIT_KEYS = ("slow_per_address",)


_SECTION_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "default": {},
    "description": "The web page and REST API",
    "properties": {
        "enabled": {"type": "boolean", "default": True},
        "listen": {"type": "string", "default": "127.0.0.1:8080",
                   "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
                   "description": "HOST:PORT to listen on ([::1]:8080 for IPv6; 0.0.0.0 for every interface)"},
        "threads": {"type": "integer", "minimum": 1, "maximum": 32, "default": 4,
                    "description": "worker threads of the HTTP server"},
        "tls": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "serve HTTPS; without cert/key a self-signed certificate is made "
                                           "in the state folder on first start"},
                "cert": {"type": "string", "default": "", "description": "PEM certificate (chain) file"},
                "key": {"type": "string", "default": "", "description": "PEM private key file"},
            },
        },
        "session": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "idle_minutes": {"type": "number", "minimum": 1, "maximum": 1440, "default": 30,
                                 "description": "a session ends after this long without a request"},
                "max_hours": {"type": "number", "minimum": 0.1, "maximum": 720, "default": 12,
                              "description": "a session ends this long after login, used or not"},
            },
        },
        "login": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "max_failures": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5,
                                 "description": "failed logins of one user from one address (or from one "
                                                "browser that logged in as that user before) before a lockout"},
                "max_failures_per_client": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 20,
                                            "description": "failed logins from one address, any user names"},
                "max_failures_per_user": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 20,
                                          "description": "failed logins of one user, from any addresses; browsers "
                                                         "that logged in as that user before are not held by it"},
                "lockout_s": {"type": "number", "minimum": 1, "maximum": 86400, "default": 300,
                              "description": "the window the failures are counted in, and how long a lock lasts"},
            },
        },
        "setup_from_localhost": {"type": "boolean", "default": True,
                                 "description": "while no user exists, offer /setup to a browser on the "
                                                "controller itself (127.0.0.1/::1) to create the first admin"},
        "users": {
            "type": "array", "default": [], "maxItems": 100,
            "description": "users declared in the config (read-only in the web page); passwords as argon2 "
                           "hashes from `bmsgw user hash`",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "role", "password_hash"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"},
                    "role": {"enum": list(ROLES)},
                    "password_hash": {"type": "string", "pattern": r"^\$argon2(id|i|d)\$", "maxLength": 512},
                },
            },
        },
        "metrics": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": True,
                            "description": "serve the Prometheus exposition at /metrics"},
                "public": {"type": "boolean", "default": True,
                           "description": "/metrics readable without login, as exporters are"},
            },
        },
        "trend_buffer": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "in-memory trend samples, used only when no history module answers queries",
            "properties": {
                "interval_s": {"type": "number", "minimum": 1, "maximum": 3600, "default": 15},
                "samples": {"type": "integer", "minimum": 10, "maximum": 5000, "default": 240},
            },
        },
        "api": {
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {
                "max_history_points": {"type": "integer", "minimum": 10, "maximum": 20000, "default": 2000},
                "max_body_kib": {"type": "integer", "minimum": 16, "maximum": 10240, "deprecated": True,
                                 "description": "deprecated: web.limits.max_request_bytes (in bytes)"},
            },
        },
    },
}
SCHEMA: dict[str, Any] = with_network_keys(_SECTION_SCHEMA, DEFAULT_LIMITS, ignored=IGNORED_LIMIT_KEYS)


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str
    port: int
    threads: int
    tls: bool
    tls_cert: str
    tls_key: str
    idle_s: float
    max_age_s: float
    max_failures: int
    max_failures_per_client: int
    max_failures_per_user: int
    lockout_s: float
    setup_from_localhost: bool
    config_users: tuple[dict, ...]
    metrics_enabled: bool
    metrics_public: bool
    buffer_interval_s: float
    buffer_samples: int
    max_history_points: int
    max_body: int
    limits: Limits = DEFAULT_LIMITS
    allow_from: tuple[str, ...] = ()

    @classmethod
    def from_section(cls, sec: dict, src: str = "config") -> WebSettings:
        try:
            host, port = parse_listen(sec["listen"])
        except ValueError as exc:  # e.g. [::::]:80: the schema's pattern cannot check an IPv6 literal
            raise ConfigError(src, "web.listen", str(exc)) from None
        limits = limits_from_section(sec, DEFAULT_LIMITS, "web", src, legacy=LEGACY_LIMIT_KEYS,
                                     ignored=IGNORED_LIMIT_KEYS)
        tls, sess, login = sec["tls"], sec["session"], sec["login"]
        met, buf, api = sec["metrics"], sec["trend_buffer"], sec["api"]
        return cls(host=host, port=port, threads=sec["threads"], tls=bool(tls["enabled"]),
                   tls_cert=tls["cert"], tls_key=tls["key"],
                   idle_s=sess["idle_minutes"] * 60.0, max_age_s=sess["max_hours"] * 3600.0,
                   max_failures=login["max_failures"],
                   max_failures_per_client=login["max_failures_per_client"],
                   max_failures_per_user=login["max_failures_per_user"], lockout_s=login["lockout_s"],
                   setup_from_localhost=sec["setup_from_localhost"],
                   config_users=tuple(sec["users"]),
                   metrics_enabled=met["enabled"], metrics_public=met["public"],
                   buffer_interval_s=buf["interval_s"], buffer_samples=buf["samples"],
                   max_history_points=api["max_history_points"],
                   max_body=limits.max_request_bytes, limits=limits, allow_from=tuple(sec.get("allow_from", ())))

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"
