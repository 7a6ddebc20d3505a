"""Entry point: builds the Typer app and turns project errors into one line + exit code."""

from __future__ import annotations

import os
import sys

import typer

from leukodx.cli import benchmark_cmd, datasets_cmd, expression_cmd, flow_cmd, infer_cmd, smear_cmd, train_cmd
from leukodx.errors import LeukodxError

app = typer.Typer(name="leukodx", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deep-learning leukemia diagnosis: datasets, training, evaluation, inference.")
app.add_typer(datasets_cmd.app, name="datasets")
app.add_typer(expression_cmd.app, name="expression")
app.add_typer(flow_cmd.app, name="flow")
train_cmd.register(app)
infer_cmd.register(app)
benchmark_cmd.register(app)
smear_cmd.register(app)

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; ``LeukodxError`` becomes ``error: <message>`` on stderr (traceback with LEUKODX_DEBUG=1)."""
    try:
        # non-standalone click returns a typer.Exit's code instead of raising it
        code = app(args=argv, prog_name="leukodx", standalone_mode=False)
        if isinstance(code, int) and code:
            return code
    except LeukodxError as exc:
        if os.environ.get("LEUKODX_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


def entry() -> None:
    sys.exit(main())
