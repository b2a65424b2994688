"""Secrets out of what people read: exception messages, logs and metadata (Dagster's event log).

One rule for URLs that may carry a password (the results store's ``DISTIL_DB_URL``, e.g.
``postgresql://user:secret@host/db``): every message shows :func:`hide_password`'s rendering,
never the URL itself.
"""

from __future__ import annotations

import re

_HIDDEN = "***"
# scheme://user:password@host... (an fsspec or other URL SQLAlchemy does not parse)
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*):(?P<password>[^@/?#]*)@")


def hide_password(url: object) -> str:
    """``url`` as text with its password replaced by ``***`` (SQLAlchemy's
    ``render_as_string(hide_password=True)``; any other ``scheme://user:password@host`` URL by the
    same rule). A URL without a password, a path or None is returned as text, unchanged."""
    if url is None:
        return "None"
    text = str(url)
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return make_url(text).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            pass
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        pass
    return _USERINFO.sub(lambda m: f"{m['head']}:{_HIDDEN}@", text, count=1)


# scheme://user:password@ anywhere in a text (an error message quoting a connection URL)
_USERINFO_ANYWHERE = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#\s]*):(?P<password>[^@/?#\s]*)@")


def redact_text(text: object) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL in it hidden (for error
    messages from drivers and libraries, which may quote the URL they were given)."""
    return _USERINFO_ANYWHERE.sub(lambda m: f"{m['head']}:{_HIDDEN}@", str(text))
