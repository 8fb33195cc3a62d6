"""state columns wide enough for waiting_for_approval

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 18:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {"deployments": ("canary_status", "paused_from"), "deployment_events": ("from_state", "to_state")}


def _resize(length_from: int, length_to: int) -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(
                    column, type_=sa.String(length=length_to), existing_type=sa.String(length=length_from)
                )


def upgrade() -> None:
    _resize(16, 32)


def downgrade() -> None:
    _resize(32, 16)
