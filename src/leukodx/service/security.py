"""Passwords (argon2id), opaque session tokens (only their sha256 is stored), roles."""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from leukodx.errors import InvalidInputError
from leukodx.service.db import ROLES, Token, User, utcnow

TOKEN_HOURS = 12
MIN_PASSWORD = 8


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidInputError(f"password: at least {MIN_PASSWORD} characters")
    return _hasher().hash(password)


def verify_password(stored: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def add_user(session: Session, name: str, password: str, role: str) -> User:
    """A new user; one line if the name is taken, the role unknown or the password too short."""
    name = name.strip()
    if role not in ROLES:
        raise InvalidInputError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise InvalidInputError(f"user name {name!r}: 1-64 characters, no spaces")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise InvalidInputError(f"user {name!r} exists already")
    user = User(name=name, password_hash=hash_password(password), role=role)
    session.add(user)
    session.commit()
    return user


def issue_token(session: Session, user: User) -> str:
    token = secrets.token_urlsafe(32)
    session.add(Token(digest=_digest(token), user_id=user.id,
                      expires=utcnow() + _dt.timedelta(hours=TOKEN_HOURS)))
    session.commit()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(Token).where(Token.digest == _digest(token)))
    if row is None:
        return None
    expires = row.expires if row.expires.tzinfo else row.expires.replace(tzinfo=_dt.timezone.utc)
    if expires < utcnow():
        return None
    return session.get(User, row.user_id)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def revoke_token(session: Session, token: str) -> None:
    """Log a session out: its token stops working at once."""
    row = session.scalar(select(Token).where(Token.digest == _digest(token)))
    if row is not None:
        session.delete(row)
        session.commit()
