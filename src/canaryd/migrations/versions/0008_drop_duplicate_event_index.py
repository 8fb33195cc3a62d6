"""drop the index on deployment_events.deployment_id: the unique (deployment_id, seq) index serves it

Every query that filtered by deployment_id alone can use the leading column of uq_deployment_events_seq, so
the second index only cost a write per event.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 01:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_events") as batch:
        batch.drop_index("ix_deployment_events_deployment_id")


def downgrade() -> None:
    with op.batch_alter_table("deployment_events") as batch:
        batch.create_index("ix_deployment_events_deployment_id", ["deployment_id"], unique=False)
