"""The account backend the daemon uses, built from settings.

``backend = 'sqlite' | 'mysql' | 'pgsql'`` reads iRedMail's vmail database,
``'ldap'`` its directory.  The server's hostname counts as a local domain
whatever the backend says (iRedAPD's rule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iredapd.backends.base import AccountBackend

if TYPE_CHECKING:
    from iredapd.services import Services

__all__ = ["create_account_backend"]


def create_account_backend(services: Services) -> AccountBackend | None:
    """The account backend for ``services.settings.backend`` (None: not available yet)."""
    return None
