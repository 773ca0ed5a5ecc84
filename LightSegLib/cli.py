"""``lightseg``: one sub-command per module, each registered by ``register(subparsers)``.

Only the module of the command being run is imported (all of them for ``--help``), and sub-command modules import
heavy packages (torch, MONAI) inside their ``run`` only, so ``lightseg segment`` starts fast and works without them;
an installation that leaves the training commands out (the Slicer extension) lists only what it has.
User errors (LightSegError) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import importlib
import importlib.util
import sys

from . import __version__
from .errors import LightSegError

#: command name -> its module in LightSegLib.commands (which registers all its commands), in ``--help`` order
COMMANDS = {
    "segment": "segment",
    "models": "models",
    "classify": "classify",
    "demo": "demo",
    "train": "train",
    "export": "export",
    "evaluate": "evaluate",
    "evaluate-ct": "evaluate",
    "publish": "publish",
    "cardiac-function": "cardiac_function",
    "prune": "prune",
    "prune-ct": "prune",
    "fold": "fold",
    "distill": "distill",
    "quantize": "quantize",
    "bench": "bench",
}


# The library's errors name its own arguments; on the command line the same advice names the flags.
API_TO_FLAGS = {"overwrite=True": "--overwrite", "allow_gaps=True": "--allow-gaps", "frame=N": "--frame N",
                "frame=": "--frame "}


def cli_wording(message: str) -> str:
    for api, flag in API_TO_FLAGS.items():
        message = message.replace(api, flag)
    return message


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with the one command it names, else with every command installed."""
    parser = argparse.ArgumentParser(prog="lightseg", description="Lightweight CPU medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"lightseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for module in [COMMANDS[named]] if named in COMMANDS else dict.fromkeys(COMMANDS.values()):
        name = f"{__package__}.commands.{module}"
        if named in COMMANDS or importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def say(kind: str, text: str, args=None) -> None:
    """A note or an error for the user: a ``lightseg: KIND: text`` line on stderr, or with ``--progress jsonl``
    a ``{"KIND": text}`` line in the JSON stream on stdout, so a program reads one channel."""
    if getattr(args, "progress", None) == "jsonl":
        print(json.dumps({kind: text}), flush=True)
    else:
        print(f"lightseg: {kind}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LightSegError as err:
        say("error", cli_wording(str(err)), args)
        return 2
    except OSError as err:  # a path the system refuses (too long, not accessible) before any work started
        where = f"{err.filename}: " if err.filename else ""
        say("error", f"{where}{err.strerror or err}", args)
        return 2
    except KeyboardInterrupt:
        print("lightseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
