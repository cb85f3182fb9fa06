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


ARM_TESTS = "tests/test_deb_arm.py::"


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only a session that runs the ARM tests starts the work
def pytest_collection_modifyitems(session, config, items):
    """The ARM packages' tests last, and their emulated work (tests/arm_pipeline.py) started now, in the
    background, so that it overlaps with every other test instead of adding minutes after them."""
    arm = [item for item in items if item.nodeid.startswith(ARM_TESTS)]
    if not arm:
        return
    items[:] = [item for item in items if not item.nodeid.startswith(ARM_TESTS)] + arm
    if not config.option.collectonly and any("arm_results" in getattr(item, "fixturenames", ()) for item in arm):
        from tests.arm_pipeline import Worker
        from tests.test_deb_arm import WORKER_KEY

        config.stash[WORKER_KEY] = Worker()


def pytest_unconfigure(config):
    """The pipeline never outlives the session (an interrupted run stops it and removes its roots)."""
    if "tests.test_deb_arm" not in sys.modules:
        return
    worker = config.stash.get(sys.modules["tests.test_deb_arm"].WORKER_KEY, None)
    if worker is not None:
        worker.close()


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
