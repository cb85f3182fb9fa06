"""Paths the test modules share (the fixtures and the CI guard are in the repository's root conftest.py,
so the tests beside the faces and device families get them too)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "config.yaml"
