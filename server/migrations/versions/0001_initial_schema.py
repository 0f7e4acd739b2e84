"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("binaries", sa.JSON(), nullable=False),
        sa.Column("env_uid", sa.String(length=36), nullable=True),
        sa.Column("wallclock", sa.Integer(), nullable=True),
        sa.Column("min_memory", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_apps_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_apps_owner_uid"), ["owner_uid"], unique=False)

    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("refcount", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_uid", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_uid", sa.String(length=36), nullable=False),
        sa.Column("object_owner_uid", sa.String(length=36), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_object_owner_uid"), ["object_owner_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_object_uid"), ["object_uid"], unique=False)

    op.create_table(
        "hosts",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("os", sa.String(length=16), nullable=False),
        sa.Column("cpu", sa.String(length=16), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("disk", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("sandbox", sa.String(length=64), nullable=False),
        sa.Column("last_alive", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("project_uid", sa.String(length=36), nullable=True),
        sa.Column("shared_apps", sa.JSON(), nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hosts_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_hosts_last_alive"), ["last_alive"], unique=False)
        batch_op.create_index(batch_op.f("ix_hosts_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_hosts_owner_uid"), ["owner_uid"], unique=False)

    op.create_table(
        "proxies",
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
    )
    with op.batch_alter_table("proxies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_proxies_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_proxies_owner_uid"), ["owner_uid"], unique=False)

    op.create_table(
        "usergroups",
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("project", sa.Boolean(), nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
        sa.UniqueConstraint("label"),
    )
    with op.batch_alter_table("usergroups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usergroups_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_usergroups_owner_uid"), ["owner_uid"], unique=False)

    op.create_table(
        "datas",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("os", sa.String(length=16), nullable=False),
        sa.Column("cpu", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("declared_sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["blobs.sha256"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("uid"),
    )
    with op.batch_alter_table("datas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_datas_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_datas_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_datas_owner_uid"), ["owner_uid"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("app_uid", sa.String(length=36), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("stdin_uid", sa.String(length=36), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("job_group", sa.String(length=128), nullable=True),
        sa.Column("expected_host", sa.String(length=255), nullable=True),
        sa.Column("wallclock", sa.Integer(), nullable=True),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry", sa.Integer(), nullable=False),
        sa.Column("listen_ports", sa.JSON(), nullable=False),
        sa.Column("forward_addresses", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=1024), nullable=True),
        sa.Column("return_code", sa.Integer(), nullable=True),
        sa.Column("result_uid", sa.String(length=36), nullable=True),
        sa.Column("host_uid", sa.String(length=36), nullable=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("platforms", sa.String(length=1024), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("max_rss", sa.BigInteger(), nullable=False),
        sa.Column("net_in", sa.BigInteger(), nullable=False),
        sa.Column("net_out", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_uid"], ["apps.uid"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("uid"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_app_uid"), ["app_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_host_uid"), ["host_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_job_group"), ["job_group"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_label"), ["label"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_owner_uid"), ["owner_uid"], unique=False)
        batch_op.create_index("ix_jobs_status_created", ["status", "created"], unique=False)

    op.create_table(
        "users",
        sa.Column("login", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("rights", sa.String(length=16), nullable=False),
        sa.Column("usergroup_uid", sa.String(length=36), nullable=True),
        sa.Column("cert_subject", sa.String(length=1024), nullable=True),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("owner_uid", sa.String(length=36), nullable=True),
        sa.Column("group_uid", sa.String(length=36), nullable=True),
        sa.Column("access_rights", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["usergroup_uid"], ["usergroups.uid"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("uid"),
        sa.UniqueConstraint("cert_subject"),
        sa.UniqueConstraint("login"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_group_uid"), ["group_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_owner_uid"), ["owner_uid"], unique=False)

    op.create_table(
        "job_refs",
        sa.Column("job_uid", sa.String(length=36), nullable=False),
        sa.Column("data_uid", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["job_uid"], ["jobs.uid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_uid", "data_uid"),
    )
    with op.batch_alter_table("job_refs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_refs_data_uid"), ["data_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_refs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_refs_data_uid"))

    op.drop_table("job_refs")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_users_group_uid"))

    op.drop_table("users")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_created")
        batch_op.drop_index(batch_op.f("ix_jobs_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_jobs_label"))
        batch_op.drop_index(batch_op.f("ix_jobs_job_group"))
        batch_op.drop_index(batch_op.f("ix_jobs_host_uid"))
        batch_op.drop_index(batch_op.f("ix_jobs_group_uid"))
        batch_op.drop_index(batch_op.f("ix_jobs_app_uid"))

    op.drop_table("jobs")
    with op.batch_alter_table("datas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datas_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_datas_name"))
        batch_op.drop_index(batch_op.f("ix_datas_group_uid"))

    op.drop_table("datas")
    with op.batch_alter_table("usergroups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usergroups_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_usergroups_group_uid"))

    op.drop_table("usergroups")
    with op.batch_alter_table("proxies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_proxies_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_proxies_group_uid"))

    op.drop_table("proxies")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hosts_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_hosts_name"))
        batch_op.drop_index(batch_op.f("ix_hosts_last_alive"))
        batch_op.drop_index(batch_op.f("ix_hosts_group_uid"))

    op.drop_table("hosts")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_object_uid"))
        batch_op.drop_index(batch_op.f("ix_events_object_owner_uid"))

    op.drop_table("events")
    op.drop_table("blobs")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_apps_owner_uid"))
        batch_op.drop_index(batch_op.f("ix_apps_group_uid"))

    op.drop_table("apps")
