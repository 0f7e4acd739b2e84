"""Result validation: policies on apps and jobs, replicas (jobs.replica_of), verdicts, host reliability,
the owner of each attempt's host

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNJUDGED = "replica_of IS NOT NULL AND verdict IS NULL AND status IN ('COMPLETED', 'ERROR')"


def upgrade() -> None:
    op.add_column("apps", sa.Column("validation", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("policy", sa.String(length=16), nullable=True))
        jobs.add_column(sa.Column("validation", sa.JSON(none_as_null=True), nullable=True))
        jobs.add_column(sa.Column("replica_of", sa.String(length=36), nullable=True))
        jobs.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        jobs.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
        jobs.add_column(sa.Column("hr_class", sa.String(length=40), nullable=True))
    op.create_index("ix_jobs_replica_of", "jobs", ["replica_of"])
    op.create_index(
        "ix_jobs_unjudged",
        "jobs",
        ["replica_of"],
        sqlite_where=sa.text(UNJUDGED),
        postgresql_where=sa.text(UNJUDGED),
    )
    op.add_column("hosts", sa.Column("quarantine", sa.JSON(), nullable=False, server_default="{}"))
    op.add_column("attempts", sa.Column("owner_uid", sa.String(length=36), nullable=True))
    op.create_table(
        "host_reliability",
        sa.Column("host_uid", sa.String(length=36), nullable=False),
        sa.Column("app_uid", sa.String(length=36), nullable=False),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
        sa.Column("valid_streak", sa.Integer(), nullable=False),
        sa.Column("error_rate", sa.Float(), nullable=False),
        sa.Column("trusted_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("quarantined_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("host_uid", "app_uid"),
    )
    op.create_index("ix_host_reliability_app_uid", "host_reliability", ["app_uid"])


def downgrade() -> None:
    op.drop_index("ix_host_reliability_app_uid", table_name="host_reliability")
    op.drop_table("host_reliability")
    with op.batch_alter_table("attempts") as attempts:
        attempts.drop_column("owner_uid")
    with op.batch_alter_table("hosts") as hosts:
        hosts.drop_column("quarantine")
    op.drop_index("ix_jobs_unjudged", table_name="jobs")
    op.drop_index("ix_jobs_replica_of", table_name="jobs")
    with op.batch_alter_table("jobs") as jobs:
        for column in ("hr_class", "verdict", "digest", "replica_of", "validation", "policy"):
            jobs.drop_column(column)
    with op.batch_alter_table("apps") as apps:
        apps.drop_column("validation")
