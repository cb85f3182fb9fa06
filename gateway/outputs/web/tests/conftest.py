"""What the web face's browser tests share: Debian's chromium driven by Playwright (it never downloads a
browser here), one per test module."""
from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.web_support import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
