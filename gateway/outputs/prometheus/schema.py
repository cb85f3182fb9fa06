"""The ``prometheus`` config section: its JSON Schema and the face's default bounds."""
from __future__ import annotations

from ...net.limits import Limits, with_network_keys

LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"
# a scrape is a GET without a body; Prometheus keeps its connection between scrapes (15-60 s apart).  64 slots:
# under a slow-loris flood a newcomer keeps its slot until 64 more have arrived, time enough for its request
DEFAULT_LIMITS = Limits(max_connections=64, max_connections_per_address=4, idle_timeout_s=120,
                        request_timeout_s=10, send_timeout_s=30, max_request_bytes=4096)
THREADS = 2  # scrapes rendered at once; a third waits for one of them (each renders the same cached text)

SCHEMA = {
    "prometheus": with_network_keys({
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {
            "enabled": {"type": "boolean", "default": True,
                        "description": "serve /metrics on a port of its own (the web face serves it too)"},
            "listen": {"type": "string", "pattern": LISTEN_PATTERN, "default": "127.0.0.1:9108",
                       "description": "host:port ([v6addr]:port); 0.0.0.0 to let a Prometheus elsewhere scrape"},
        },
    }, DEFAULT_LIMITS),
}
