import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "config.yaml"


@pytest.fixture
def bmsgw_env():
    """Environment for running the `bmsgw` console script of this checkout's venv."""
    env = dict(os.environ)
    env.pop("BMSGW_CONFIG", None)
    return env


@pytest.fixture
def venv_bin():
    return Path(sys.executable).parent
