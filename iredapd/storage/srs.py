"""The ``srs_exclude_domains`` table: domains whose senders SRS leaves alone."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from iredapd.storage.db import Database
from iredapd.storage.schema import srs_exclude_domains

__all__ = ["is_excluded"]


async def is_excluded(db: Database, candidates: Sequence[str]) -> bool:
    """True if the table holds any of ``candidates`` (one indexed query)."""
    if not candidates:
        return False
    stmt = (
        sa.select(srs_exclude_domains.c.id)
        .where(srs_exclude_domains.c.domain.in_(list(candidates)))
        .limit(1)
    )
    return await db.fetchone(stmt) is not None
