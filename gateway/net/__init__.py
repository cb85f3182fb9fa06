"""Network serving shared by every TCP face: the limits a client is held to (``limits``), a bounded asyncio TCP
server (``server``), TLS for it (``tls``) and HTTP/1.1 for WSGI applications on top (``http``).

Core: it imports the config layer, never a face.
"""
from __future__ import annotations

from .limits import Limits
from .server import BindError, BoundedConnection, BoundedServer

__all__ = ["BindError", "BoundedConnection", "BoundedServer", "Limits"]
