"""``leukodx serve | worker | db upgrade | users add``: the review service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)

DataDir: Optional[Path] = typer.Option(None, "--data-dir", help="Service data folder (uploads; the SQLite database "
                                                                "unless --database-url). Default: "
                                                                "$LEUKODX_SERVICE_DIR or ~/.local/share/leukodx.")
DatabaseUrl: Optional[str] = typer.Option(None, "--database-url", help="sqlite:///FILE or postgresql+psycopg://USER:"
                                                                       "PASSWORD@HOST/DB (default: $LEUKODX_DATABASE_URL, "
                                                                       "else SQLite in the data folder).")


StaleAfter: float = typer.Option(120.0, "--stale-after", min=15.0,
                                 help="Seconds without a heartbeat after which a running job's worker is taken "
                                      "to be dead and the job is run again (at most 3 attempts).")


def _settings(data_dir, database_url, **options):
    """The service's settings, after checking its optional dependencies are installed."""
    import importlib.util

    from leukodx.errors import InvalidInputError
    from leukodx.service.config import Settings

    missing = [m for m in ("fastapi", "sqlalchemy", "alembic", "uvicorn", "argon2") if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInputError(f"the review service needs {', '.join(missing)}: pip install 'leukodx[service]'")
    return Settings.resolve(data_dir, database_url, **options).prepare()


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(no_args_is_help=True, help="The service database: create or migrate its schema.")
    users_app = typer.Typer(no_args_is_help=True, help="Service users.")
    app.add_typer(db_app, name="db")
    app.add_typer(users_app, name="users")

    @db_app.command("upgrade")
    def db_upgrade(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
        """Apply every migration (Alembic) to the database: creates it on first use."""
        from leukodx.service.migrate import redact, upgrade

        settings = _settings(data_dir, database_url)
        revision = upgrade(settings.database_url)
        console.print(f"{redact(settings.database_url)}: schema at revision {revision}")

    @users_app.command("add")
    def users_add(name: str = typer.Argument(..., help="User name (no spaces)."),
                  role: str = typer.Option("reviewer", help="reviewer | admin"),
                  data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl) -> None:
        """Add a user; the password is read from stdin when it is not a terminal, else prompted twice."""
        from leukodx.service.db import make_engine, session_factory
        from leukodx.service.migrate import upgrade
        from leukodx.service.security import add_user

        settings = _settings(data_dir, database_url)
        if sys.stdin.isatty():
            password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
        else:
            password = sys.stdin.readline().rstrip("\n")
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            with session_factory(engine)() as session:
                user = add_user(session, name, password, role)
                console.print(f"user {user.name!r} added ({user.role})")
        finally:
            engine.dispose()

    @app.command("serve")
    def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
              port: int = typer.Option(8000, min=1, max=65535),
              data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl,
              worker: bool = typer.Option(True, help="Run an embedded worker (one command on one machine)."),
              stale_after: float = StaleAfter) -> None:
        """The review service: the REST API (and OpenAPI at /openapi.json) under uvicorn."""
        import uvicorn

        from leukodx.service.app import create_app
        from leukodx.service.migrate import upgrade

        settings = _settings(data_dir, database_url, stale_seconds=stale_after)
        upgrade(settings.database_url)
        uvicorn.run(create_app(settings, embedded_worker=worker), host=host, port=port, log_level="warning")

    @app.command("worker")
    def worker_cmd(data_dir: Optional[Path] = DataDir, database_url: Optional[str] = DatabaseUrl,
                   once: bool = typer.Option(False, "--once", help="Run the queued jobs, then exit."),
                   stale_after: float = StaleAfter) -> None:
        """Run analysis jobs from the database (any number of workers, on any machine reaching it)."""
        import threading

        from leukodx.service.db import make_engine, session_factory
        from leukodx.service.jobs import run_forever, run_one
        from leukodx.service.migrate import upgrade

        settings = _settings(data_dir, database_url, stale_seconds=stale_after)
        upgrade(settings.database_url)
        factory = session_factory(make_engine(settings.database_url))
        if once:
            n = 0
            while run_one(factory, settings) is not None:
                n += 1
            console.print(f"{n} job(s) run")
            return
        run_forever(factory, settings, threading.Event())
