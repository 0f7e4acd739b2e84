"""per-host credentials, token versions, certificate registry; no NaN CPU times

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Heartbeats could store NaN/infinite CPU times before the API refused them (PostgreSQL keeps NaN,
    # SQLite turns it into NULL); such a job could not be shown any more.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE jobs SET cpu_seconds = 0 WHERE cpu_seconds IN ('NaN', 'Infinity', '-Infinity')")
    else:
        op.execute("UPDATE jobs SET cpu_seconds = 0 WHERE cpu_seconds IS NULL")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_version", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("credential_issued", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoked", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoke_reason", sa.String(length=512), nullable=True))
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("user_uid", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=1024), nullable=False),
        sa.Column("issued", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("serial"),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_user_uid"), ["user_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_certificates_revoked"), ["revoked"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_revoked"))
        batch_op.drop_index(batch_op.f("ix_certificates_user_uid"))
    op.drop_table("certificates")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("revoke_reason")
        batch_op.drop_column("revoked")
        batch_op.drop_column("credential_issued")
        batch_op.drop_column("credential_hash")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("token_version")
