"""``lightseg``: one sub-command per module, each registered by ``register(subparsers)``.

The runtime's commands live in ``LightSegLib.commands``; the workshop's (train, prune, publish, ...) are offered by
the ``lightseglib.commands`` entry points, so this module never imports the workshop and an installation without it
(the Slicer extension) lists only what it has. Without the training packages the workshop's commands are listed
as needing them and refuse in one line. Only the module of the command being run is imported (all of them for
``--help``). User errors (LightSegError) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from importlib.metadata import entry_points

from . import __version__
from .errors import LightSegError

#: the runtime's commands: name -> its module in LightSegLib.commands, in ``--help`` order
COMMANDS = {
    "segment": "segment",
    "models": "models",
    "classify": "classify",
    "refine": "refine",
    "demo": "demo",
    "cardiac-function": "cardiac_function",
    "batch": "batch",
    "web": "web",
}
#: what the workshop's commands import beyond the runtime
TRAINING_PACKAGES = ("torch", "monai", "torch_pruning", "onnx")
TRAINING_INSTALL = "pip install 'lightseglib[train]'"


def workshop_commands() -> dict:
    """name -> entry point of the workshop's commands that this installation carries."""
    return {ep.name: ep for ep in entry_points(group="lightseglib.commands")}


def missing_training_packages() -> list[str]:
    return [name for name in TRAINING_PACKAGES if importlib.util.find_spec(name) is None]


def _register_unavailable(sub, name: str, missing: list[str]) -> None:
    """A workshop command this installation cannot run: listed, and refused in one line before any work."""
    def refuse(args) -> int:
        raise LightSegError(f"'lightseg {name}' needs the training install ({', '.join(missing)} missing): "
                            f"{TRAINING_INSTALL}")

    parser = sub.add_parser(name, help=f"[needs {TRAINING_INSTALL}]", add_help=False, prefix_chars="\0")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=refuse)


# The library's errors name its own arguments; on the command line the same advice names the flags.
API_TO_FLAGS = {"overwrite=True": "--overwrite", "allow_gaps=True": "--allow-gaps", "frame=N": "--frame N",
                "frame=": "--frame ", "hu_offset=": "--hu-offset "}


def cli_wording(message: str) -> str:
    for api, flag in API_TO_FLAGS.items():
        message = message.replace(api, flag)
    return message


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with the one command it names, else with every command installed."""
    workshop = workshop_commands()
    missing = missing_training_packages() if workshop else []
    parser = argparse.ArgumentParser(
        prog="lightseg", description="Lightweight CPU medical image segmentation.",
        epilog=f"Commands marked [needs ...] build models and need the training install: {TRAINING_INSTALL}."
        if workshop and missing else None)
    parser.add_argument("--version", action="version", version=f"lightseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if named in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{COMMANDS[named]}").register(sub)
        return parser
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"{__package__}.commands.{module}").register(sub)
    registered: set = set()
    for name, ep in workshop.items():
        if named in workshop and name != named:
            continue
        if missing:
            _register_unavailable(sub, name, missing)
        elif ep.value not in registered:  # a module registers all its commands (evaluate and evaluate-ct)
            registered.add(ep.value)
            ep.load().register(sub)
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
