"""Run by tests/test_lazy_imports.py in a fresh interpreter: start a gateway with every face on (the default
config on a small bank), print which of the libraries a running gateway loads only when first needed are in
sys.modules, then use each such feature once and print again.  One JSON line per stage."""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayThread, small_bank, write_config

LAZY = ("flask", "werkzeug", "jinja2")


def loaded() -> list[str]:
    return sorted(m for m in LAZY if m in sys.modules)


def main(folder: str) -> None:
    path = write_config(Path(folder), base=small_bank(1, 4))
    with GatewayThread(path) as gt:
        print(json.dumps({"stage": "started", "loaded": loaded()}), flush=True)
        web = gt.gateway.service("web")
        with urllib.request.urlopen(f"{web.url}login", timeout=30) as r:
            page = r.read().decode()
        print(json.dumps({"stage": "web", "loaded": loaded(), "status": r.status,
                          "login_form": 'name="password"' in page}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
