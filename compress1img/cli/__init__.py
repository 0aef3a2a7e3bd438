"""The `compress1img` command: a thin layer over `compress1img.api` (parse, settings, API call, summary).

    options.py    the options, declared once, and `build`: option values -> settings classes
    commands.py   one function per command
    summaries.py  what a finished command prints

Exit codes: 0 success, 2 bad input or usage, 1 anything else, 130 interrupted.
Errors are one line; `--debug` (anywhere on the command line) shows the traceback.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys

import typer

from .. import distributed, progress
from ..errors import Compress1imgError, InputError, first_line
from ..report import LAUNCHED_AS, command_line
from ..training import TrainingInterrupted
from .commands import app

log = logging.getLogger("compress1img")

__all__ = ["app", "main"]


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _LineHandler(logging.StreamHandler):
    """Warnings on a line of their own, also while a stage's progress line is open."""

    def emit(self, record: logging.LogRecord) -> None:
        progress.break_line()
        super().emit(record)


def _take_nproc(argv: list[str]) -> tuple[list[str], int]:
    """`--nproc N` or `--nproc=N` anywhere on the command line, like --debug; (the rest, N)."""
    rest, nproc, i = [], 1, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--nproc" or arg.startswith("--nproc="):
            value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            try:
                nproc = int(value)
            except ValueError:
                raise InputError(f"--nproc takes a number of processes (got {value!r})") from None
            if nproc < 1:
                raise InputError(f"--nproc must be at least 1 (got {nproc})")
            continue
        rest.append(arg)
        i += 1
    return rest, nproc


def _say(message: str, every_rank: bool) -> None:
    """An error line on stderr. In several processes rank 0 says what all ranks hit alike (bad input,
    Ctrl-C); anything else every rank that meets it says, naming itself."""
    progress.break_line()
    if distributed.is_main():
        print(message, file=sys.stderr)
    elif every_rank:
        print(f"rank {distributed.rank()}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = ["compress1img", *argv]  # what the report records
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if distributed.is_main() else logging.ERROR)
    log.propagate = False
    command = typer.main.get_command(app)
    try:
        argv, nproc = _take_nproc(argv)
        name = next((a for a in argv if not a.startswith("-")), None)
        if nproc > 1:
            if distributed.active():
                raise InputError("--nproc under torchrun: use one or the other")
            if name not in distributed.TRAINING_COMMANDS:
                raise InputError(f"--nproc applies to {', '.join(distributed.TRAINING_COMMANDS)}, not "
                                 f"{name or 'no command'}")
            os.environ[LAUNCHED_AS] = shlex.join(typed)
            sys.exit(distributed.launch(nproc, argv + ["--debug"] * debug, quiet=not debug))
        distributed.check_command(name)
        with command_line(typed):
            command.main(args=argv, prog_name="compress1img", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt, TrainingInterrupted) as e:
        if debug:
            raise
        _say(f"interrupted: {e}" if str(e) else "interrupted", every_rank=False)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors (typer's click): exit code 2, one line like ours
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _say(f"error: {' '.join(e.format_message().split())}{where}", every_rank=False)
        sys.exit(getattr(e, "exit_code", 2))
    except Compress1imgError as e:
        if debug:
            raise
        _say(f"error: {e}", every_rank=not isinstance(e, InputError))
        sys.exit(2 if isinstance(e, InputError) else 1)
    except Exception as e:
        if debug:
            raise
        _say(f"error: {first_line(e, with_type=True)} (run again with --debug for the traceback)", every_rank=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
