"""job labels unique among each owner's jobs (NULL and empty labels unlimited)

Jobs that already share a label with an older job of the same owner are relabelled ``<label>-<uid>``
(with a ``relabel`` event saying why): their label was ambiguous, no command could name them by it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABELLED = "label IS NOT NULL AND label <> ''"  # server.db.models.LABELLED, as it was at this revision
MAX_LABEL = 128

jobs = sa.table(
    "jobs",
    sa.column("uid", sa.String),
    sa.column("owner_uid", sa.String),
    sa.column("label", sa.String),
    sa.column("created", sa.DateTime(timezone=True)),
)
events = sa.table(
    "events",
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor_uid", sa.String),
    sa.column("kind", sa.String),
    sa.column("object_uid", sa.String),
    sa.column("object_owner_uid", sa.String),
    sa.column("action", sa.String),
    sa.column("reason", sa.String),
)


def _relabel_duplicates() -> None:
    """Keep each label on the owner's oldest job that has it; the others become ``<label>-<uid>``."""
    bind = op.get_bind()
    labelled = sa.and_(jobs.c.owner_uid.is_not(None), jobs.c.label.is_not(None), jobs.c.label != "")
    shared = (
        sa.select(jobs.c.owner_uid, jobs.c.label)
        .where(labelled)
        .group_by(jobs.c.owner_uid, jobs.c.label)
        .having(sa.func.count() > 1)
    )
    now = datetime.now(UTC)
    for owner, label in bind.execute(shared).all():
        same = sa.select(jobs.c.uid).where(jobs.c.owner_uid == owner, jobs.c.label == label)
        first, *others = bind.execute(same.order_by(jobs.c.created, jobs.c.uid)).scalars().all()
        for uid in others:
            new = f"{label[: MAX_LABEL - len(uid) - 1]}-{uid}"
            bind.execute(sa.update(jobs).where(jobs.c.uid == uid).values(label=new))
            reason = (
                f"label {label!r} is job {first}'s too; labels are now unique among an owner's jobs: {new!r}"
            )
            bind.execute(
                sa.insert(events).values(
                    at=now,
                    actor_uid=None,
                    kind="work",
                    object_uid=uid,
                    object_owner_uid=owner,
                    action="relabel",
                    reason=reason[:1024],
                )
            )


def upgrade() -> None:
    _relabel_duplicates()
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ux_jobs_owner_label",
            ["owner_uid", "label"],
            unique=True,
            sqlite_where=sa.text(LABELLED),
            postgresql_where=sa.text(LABELLED),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ux_jobs_owner_label")
