"""OpenID Connect: identities (issuer, subject) linked to users; spent ID tokens (replay refusal)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_uid", sa.String(length=36), nullable=False),
        sa.Column("issuer", sa.String(length=1024), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_uid"], ["users.uid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uid"),
    )
    op.create_index("ix_identities_user_uid", "identities", ["user_uid"])
    op.create_index("ix_identities_issuer_subject", "identities", ["issuer", "subject"], unique=True)
    op.create_table(
        "spent_id_tokens",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_index("ix_spent_id_tokens_expires", "spent_id_tokens", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_spent_id_tokens_expires", table_name="spent_id_tokens")
    op.drop_table("spent_id_tokens")
    op.drop_index("ix_identities_issuer_subject", table_name="identities")
    op.drop_index("ix_identities_user_uid", table_name="identities")
    op.drop_table("identities")
