"""attempts (one run of a job on one host), jobs.attempt_uid, inline blobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("job_uid", sa.String(length=36), nullable=False),
        sa.Column("host_uid", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.Column("return_code", sa.Integer(), nullable=True),
        sa.Column("result_uid", sa.String(length=36), nullable=True),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("max_rss", sa.BigInteger(), nullable=False),
        sa.Column("net_in", sa.BigInteger(), nullable=False),
        sa.Column("net_out", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempts_job_uid"), ["job_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempts_host_uid"), ["host_uid"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt_uid", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_attempt_uid"), ["attempt_uid"], unique=False)
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inline", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("inline")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_attempt_uid"))
        batch_op.drop_column("attempt_uid")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_host_uid"))
        batch_op.drop_index(batch_op.f("ix_attempts_job_uid"))
    op.drop_table("attempts")
