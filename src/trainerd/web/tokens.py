"""run/token: the one secret every write to the HTTP API needs (Authorization: Bearer)."""

from __future__ import annotations

import contextlib
import os
import secrets

from trainerd import atomic
from trainerd.paths import Layout

TOKEN_FILE = "token"


def ensure_token(layout: Layout) -> str:
    """run/token: made once (random, 0600), reused across restarts so a saved token keeps
    working. Delete the file and restart the daemon to rotate it."""
    path = layout.run / TOKEN_FILE
    token = read_token(layout)
    if token:
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:  # someone loosened it; a token is a password
                os.chmod(path, 0o600)
        return token
    token = secrets.token_urlsafe(32)
    atomic.write_text(path, token + "\n", mode=0o600)  # mkstemp: 0600 from the first byte
    return token


def read_token(layout: Layout) -> str | None:
    try:
        return (layout.run / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None
