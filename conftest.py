"""Fixtures and checks every test gets, wherever it lives: tests/, plugins/<family>/tests/ and
gateway/outputs/<face>/tests/."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `tests.support` & co. from any test folder


@pytest.fixture
def bmsgw_env():
    """Environment for running the `bmsgw` console script of this checkout's venv."""
    env = dict(os.environ)
    env.pop("BMSGW_CONFIG", None)
    return env


@pytest.fixture
def venv_bin():
    return Path(sys.executable).parent


def pytest_sessionfinish(session, exitstatus):
    """On CI (.ci/run sets BMSGW_CI) a green run must have run tests, and every one of them: a skipped
    test means a peer or a privilege is missing, which the set-up should have provided."""
    if not os.environ.get("BMSGW_CI") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if session.testscollected == 0 or skipped:
        if reporter:
            reporter.ensure_newline()
            reporter.write_line(f"CI: {session.testscollected} tests collected, {skipped} skipped: failing the run",
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
