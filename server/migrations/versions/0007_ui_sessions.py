"""Dashboard sessions (ui_sessions); jobs indexed by (created, uid) for the dashboard's keyset pages

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_uid", sa.String(length=36), nullable=False),
        sa.Column("token_version", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_uid"], ["users.uid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_ui_sessions_user_uid", "ui_sessions", ["user_uid"])
    op.create_index("ix_ui_sessions_expires", "ui_sessions", ["expires"])
    op.create_index("ix_jobs_created_uid", "jobs", ["created", "uid"])


def downgrade() -> None:
    op.drop_index("ix_jobs_created_uid", table_name="jobs")
    op.drop_index("ix_ui_sessions_expires", table_name="ui_sessions")
    op.drop_index("ix_ui_sessions_user_uid", table_name="ui_sessions")
    op.drop_table("ui_sessions")
