"""applications carry default deployment settings; deployments record where each setting came from

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("applications") as batch:
        batch.add_column(
            sa.Column("deployment_defaults", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("config_sources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("config_sources")
    with op.batch_alter_table("applications") as batch:
        batch.drop_column("deployment_defaults")
