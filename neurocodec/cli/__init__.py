"""The `neurocodec` command: `convert`, `info`, `verify`, `split`, `stats`, `show`, `plugins` (one module each here).

Exit status: 0 on success; 1 when the command failed, with one line
`neurocodec <command>: error: ...` on stderr (a bad or hostile dataset, a bad input file, an
output path in the way, a storage error, running out of memory); 2 when the command line itself
is malformed (argparse's usage message); 130 when interrupted. Output cut short by a reader that
went away (`neurocodec plugins | head -1`) ends quietly with status 1, as Python's documentation
recommends for a broken pipe.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from neurocodec import __version__
from neurocodec.cli import convert, info, plugins, show, split, stats
from neurocodec.cli.options import CommandLineError, check_output_arg
from neurocodec.cli.wording import flags_of, in_flags
from neurocodec.errors import NeurocodecError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `neurocodec` command: one module of this package per command."""
    parser = argparse.ArgumentParser(prog="neurocodec", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip())
    parser.add_argument("--version", action="version", version=f"neurocodec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (info, plugins, convert, split, stats, show):
        command.add_parsers(sub)
    for command_parser in sub.choices.values():  # error messages speak of each command's own flags
        command_parser.set_defaults(cli_flags=flags_of(command_parser))
    return parser


def _dataset_of(args: argparse.Namespace) -> str:
    """What the command was working on, for messages that do not say it themselves."""
    if getattr(args, "path", None):
        return str(args.path)
    if getattr(args, "output", None):
        return f"converting {' '.join(map(str, args.input))} to {args.output}"
    return ""


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def _message(args: argparse.Namespace, exc: BaseException) -> str:
    """The error line's text: the exception's message, naming the dataset if it does not."""
    from neurocodec.storage.location import dataset_path

    text = in_flags(_one_line(str(exc)), getattr(args, "cli_flags", {}))
    if isinstance(exc, MemoryError):
        text = "out of memory" + (f" ({text})" if text else "")
    elif isinstance(exc, SystemError):
        text = f"internal error in a library ({type(exc).__name__}: {text})"
    elif isinstance(exc, OSError) and not text:
        text = type(exc).__name__
    subject, path = _dataset_of(args), getattr(args, "path", None)
    if not subject or subject in text or (path is not None and str(dataset_path(path)) in text):
        return text
    about_data = isinstance(exc, (MemoryError, SystemError)) or (
        path is not None and isinstance(exc, (NeurocodecError, OSError)) and not isinstance(exc, CommandLineError))
    return f"{subject}: {text}" if about_data else text


def _stdout_closed() -> bool:
    """True if stdout is a pipe or socket whose reader has gone away."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    try:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(): trust the error
        return True


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one subcommand; errors print one line and exit non-zero (see the module
    docstring for the exit statuses)."""
    args = build_parser().parse_args(argv)
    try:
        check_output_arg(args)
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here at the latest
        return status
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _fail(args, exc)
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        print(f"neurocodec {args.command}: interrupted", file=sys.stderr)
        return 130
    except (NeurocodecError, ValueError, OSError, MemoryError, SystemError) as exc:
        return _fail(args, exc)


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    print(f"neurocodec {args.command}: error: {_message(args, exc)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
