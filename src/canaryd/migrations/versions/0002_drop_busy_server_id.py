"""drop deployments.busy_server_id (never written: an interrupted deploy is recorded as version unknown)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("busy_server_id")


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("busy_server_id", sa.Integer(), nullable=True))
