"""cells: the box of a white cell found in a smear field, and a thumbnail for the review gallery

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 06:05:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cells') as batch:
        batch.add_column(sa.Column('box', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('thumbnail', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cells') as batch:
        batch.drop_column('thumbnail')
        batch.drop_column('box')
