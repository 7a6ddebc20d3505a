"""audit: append-only in the database itself (UPDATE and DELETE refused by a trigger)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:20:00
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION audit_append_only() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'the audit trail is append-only'; END $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_no_{action.lower()} BEFORE {action} ON audit "
                       "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_append_only ON audit")
        op.execute("DROP FUNCTION audit_append_only()")
    else:
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER audit_no_{action}")
