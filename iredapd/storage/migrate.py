"""Create missing tables and bring an older iRedAPD database up to date.

Idempotent: run at every start.  Only adds (tables, columns, indexes); never
drops or rewrites what an admin's database already holds.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iredapd.storage.schema import METADATA

__all__ = ["upgrade"]

log = logging.getLogger(__name__)


def _add_missing_columns(engine: Engine, metadata: sa.MetaData) -> None:
    """Add columns that newer iRedAPD versions introduced (e.g. max_rcpts)."""
    insp = sa.inspect(engine)
    existing_tables = set(insp.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            ddl = sa.schema.CreateColumn(col).compile(dialect=engine.dialect)
            log.info("upgrading table %s: adding column %s", table.name, col.name)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def upgrade(engine: Engine, name: str) -> None:
    """Create the tables of database ``name`` that are missing, add missing columns."""
    metadata = METADATA.get(name)
    if metadata is None:
        return
    metadata.create_all(engine, checkfirst=True)
    _add_missing_columns(engine, metadata)
