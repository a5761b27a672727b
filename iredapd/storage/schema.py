"""Tables of the databases this project owns or reads, as SQLAlchemy Core.

Names, columns and indexes are iRedAPD's (its MySQL and PostgreSQL schema), so
an existing iRedAPD database works unchanged; SQLite gets the same shape.

``METADATA`` maps a database name (``iredapd``, ``amavisd``, ``vmail``) to its
MetaData.  The daemon creates the tables of the databases it owns (``iredapd``;
``vmail`` and ``amavisd`` only on the embedded SQLite default).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["METADATA", "iredapd_metadata", "smtp_sessions"]

iredapd_metadata = sa.MetaData()

# An auto-increment id: BIGINT UNSIGNED on MySQL, SERIAL on PostgreSQL,
# INTEGER PRIMARY KEY (rowid) on SQLite.
ID = sa.Integer().with_variant(mysql.BIGINT(unsigned=True), "mysql")


def _str(n: int) -> sa.String:
    return sa.String(n)


smtp_sessions = sa.Table(
    "smtp_sessions",
    iredapd_metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
    sa.Column(
        "time_num",
        sa.BigInteger().with_variant(mysql.INTEGER(unsigned=True), "mysql"),
        nullable=False,
        server_default="0",
    ),
    sa.Column("action", _str(20), nullable=False, server_default=""),
    sa.Column("reason", _str(255), nullable=False, server_default=""),
    sa.Column("instance", _str(40), nullable=False, server_default=""),
    sa.Column("client_address", _str(40), nullable=False, server_default=""),
    sa.Column("client_name", _str(255), nullable=False, server_default=""),
    sa.Column("reverse_client_name", _str(255), nullable=False, server_default=""),
    sa.Column("helo_name", _str(255), nullable=False, server_default=""),
    sa.Column("sender", _str(255), nullable=False, server_default=""),
    sa.Column("sender_domain", _str(255), nullable=False, server_default=""),
    sa.Column("sasl_username", _str(255), nullable=False, server_default=""),
    sa.Column("sasl_domain", _str(255), nullable=False, server_default=""),
    sa.Column("recipient", _str(255), nullable=False, server_default=""),
    sa.Column("recipient_domain", _str(255), nullable=False, server_default=""),
    sa.Column("encryption_protocol", _str(20), nullable=False, server_default=""),
    sa.Column("encryption_cipher", _str(50), nullable=False, server_default=""),
    sa.Column("server_address", _str(40), nullable=False, server_default=""),
    sa.Column("server_port", _str(10), nullable=False, server_default=""),
)
for _col in smtp_sessions.columns:
    if _col.name != "id":
        sa.Index(f"idx_smtp_sessions_{_col.name}", _col)

METADATA: dict[str, sa.MetaData] = {"iredapd": iredapd_metadata}
