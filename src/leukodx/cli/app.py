"""Entry point: builds the Typer app and turns every error into one line + an exit code.

Command modules import only typer and rich at module level; torch, timm and the data stack are
imported inside the commands that need them, so ``--help`` and light verbs start fast.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

from leukodx.cli import (benchmark_cmd, datasets_cmd, expression_cmd, flow_cmd, infer_cmd, service_cmd, smear_cmd,
                         train_cmd)
from leukodx.errors import Interrupted, LeukodxError, first_line

app = typer.Typer(name="leukodx", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deep-learning leukemia diagnosis: datasets, training, evaluation, inference.")
app.add_typer(datasets_cmd.app, name="datasets")
app.add_typer(expression_cmd.app, name="expression")
app.add_typer(flow_cmd.app, name="flow")
train_cmd.register(app)
infer_cmd.register(app)
benchmark_cmd.register(app)
smear_cmd.register(app)
service_cmd.register(app)

EXIT_USER_ERROR = 2


def _version(value: bool) -> None:
    if value:
        from leukodx import __version__

        print(f"leukodx {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log detail (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
) -> None:
    """Deep-learning leukemia diagnosis: datasets, training, evaluation, inference."""
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO)


def configure_logging(level: int) -> None:
    """Library log records (``leukodx.*``) go to stderr through rich; third-party chatter is silenced."""
    import warnings

    from rich.logging import RichHandler

    logger = logging.getLogger("leukodx")
    logger.handlers[:] = [RichHandler(show_time=False, show_path=level <= logging.DEBUG, markup=False,
                                      console=_stderr_console())]
    logger.setLevel(level)
    logger.propagate = False
    if level > logging.DEBUG:  # deprecation notices of dependencies are not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _usage_error(exc: BaseException) -> int | None:
    """Click's usage errors (typer ships its own copy of click; plain click too): one line + usage."""
    show = getattr(exc, "show", None)
    code = getattr(exc, "exit_code", None)
    if callable(show) and isinstance(code, int):
        show()
        return code
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; ``LeukodxError`` becomes ``error: <message>`` on stderr (traceback with LEUKODX_DEBUG=1)."""
    from leukodx._versions import set_command

    set_command(["leukodx", *(sys.argv[1:] if argv is None else argv)])
    Interrupted.latest = None
    try:
        # non-standalone click returns a typer.Exit's code instead of raising it (Ctrl-C included: 130)
        code = app(args=argv, prog_name="leukodx", standalone_mode=False)
        if code == 130:
            return _interrupted(Interrupted.latest or KeyboardInterrupt())
        if isinstance(code, int) and code:
            return code
    except LeukodxError as exc:
        if os.environ.get("LEUKODX_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort) as exc:
        return _interrupted(exc)
    except Exception as exc:
        code = _usage_error(exc)
        if code is not None:
            return code
        if os.environ.get("LEUKODX_DEBUG"):
            raise
        return _internal_error(exc)
    return 0


def _interrupted(exc: BaseException) -> int:
    """Ctrl-C: a batch says how much it kept; anything else was written atomically or not at all."""
    print(f"error: {exc}" if isinstance(exc, Interrupted) else "error: interrupted; no output written",
          file=sys.stderr)
    return 130


#: exit status of an unexpected failure (sysexits' EX_SOFTWARE)
EXIT_INTERNAL_ERROR = 70


def _internal_error(exc: BaseException) -> int:
    """The last-resort handler: one line for the user, the traceback in a crash file. A safety net, not
    a fix: every such case deserves its own clear error."""
    import datetime as _dt
    import traceback

    from leukodx.data.cache import cache_dir

    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = "(no crash file could be written)"
    try:
        crash_dir = cache_dir() / "crash"
        crash_dir.mkdir(parents=True, exist_ok=True)
        path = crash_dir / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"leukodx {' '.join(sys.argv[1:])}\n\n{detail}")
        where = f"details in {path}"
    except OSError:
        pass
    first = first_line(exc)
    print(f"internal error: {type(exc).__name__}{': ' + first if first else ''}; {where} "
          "(please report it)", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def entry() -> None:
    sys.exit(main())
