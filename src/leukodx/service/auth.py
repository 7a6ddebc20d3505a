"""Who is asking: a bearer token (API clients) or a session cookie (the browser), one table of
opaque tokens behind both. A cookie-authenticated request that changes anything must carry the
session's CSRF token in ``X-CSRF-Token`` (the page gets it in a ``<meta>`` tag; another site's page
cannot read it). Failed logins are rate-limited per user name and client.
(No ``from __future__ import annotations``: FastAPI reads the dependency annotations at run time.)"""

import hashlib
import hmac
import threading
import time
from collections import defaultdict, deque
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from leukodx.service.db import Case, User
from leukodx.service.security import user_for_token

SESSION_COOKIE = "leukodx_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: failed logins per user name and client within ``LOGIN_WINDOW`` seconds before 429
LOGIN_FAILURES = 5
LOGIN_WINDOW = 60.0

#: ids are 32-bit integers in both databases: a larger one is a 422, never a database error
ID = Annotated[int, Path(ge=1, le=2 ** 31 - 1)]

bearer = OAuth2PasswordBearer(tokenUrl="/api/token", auto_error=False)


def csrf_for(session_token: str) -> str:
    """The CSRF token of a browser session: derived from the session token, which scripts cannot read."""
    return hashlib.sha256(b"leukodx-csrf:" + session_token.encode()).hexdigest()


class LoginLimiter:
    """Failed logins per (user name, client address) in a sliding window; thread-safe."""

    def __init__(self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW):
        self.failures, self.window = failures, window
        self._seen: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._seen[key]
            while recent and now - recent[0] > self.window:
                recent.popleft()
            if len(recent) >= self.failures:
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many failed logins; wait a minute")

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._seen[key].append(time.monotonic())


def session(request: Request) -> Session:
    with request.app.state.factory() as s:
        yield s


DB = Annotated[Session, Depends(session)]


def authenticate(request: Request, db: Session, token: str | None) -> User | None:
    """The user behind a bearer token, else behind the session cookie (CSRF checked on changes)."""
    if token:
        return user_for_token(db, token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    user = user_for_token(db, cookie)
    if user is not None and request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, ""), csrf_for(cookie)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header for a browser session")
    return user


def current_user(request: Request, db: DB, token: Annotated[str | None, Depends(bearer)]) -> User:
    user = authenticate(request, db, token)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not logged in, or the session expired",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


Me = Annotated[User, Depends(current_user)]


def admin(user: Me) -> User:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin only")
    return user


Admin = Annotated[User, Depends(admin)]


def get_case(db: Session, case_id: int) -> Case:
    case = db.get(Case, case_id)
    if case is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no case {case_id}")
    return case


def writable(case: Case) -> None:
    if case.status == "signed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"case {case.id} is signed; amend it to change it")
