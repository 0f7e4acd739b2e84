"""host requests: a machine without an account asks for a host credential, an administrator decides

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "host_requests",
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("os", sa.String(length=16), nullable=False),
        sa.Column("cpu", sa.String(length=16), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("disk", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("sandbox", sa.String(length=64), nullable=False),
        sa.Column("decided", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=36), nullable=True),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("host_uid", sa.String(length=36), nullable=True),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
    )
    with op.batch_alter_table("host_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_requests_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_host_requests_owner_uid"), ["owner_uid"], unique=False)
        batch_op.create_index("ix_host_requests_status_address", ["status", "address"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("host_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_host_requests_status_address")
        batch_op.drop_index(batch_op.f("ix_host_requests_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_host_requests_group_uid"))
    op.drop_table("host_requests")
