"""Secrets the notifiers need in clear (an SMTP password, a SIM PIN), read from a file the bmsgw user owns.

The reading and the permission check live in ``gateway.secretfiles`` (the MQTT face reads its password file
the same way); this name stays for the notifiers.
"""
from __future__ import annotations

from ..secretfiles import read_secret

__all__ = ["read_secret"]
