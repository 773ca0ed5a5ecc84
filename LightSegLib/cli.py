"""``lightseg``: one sub-command per module, each registered by ``register(subparsers)``.

Sub-command modules import heavy packages (torch, MONAI) inside their ``run`` only, so ``lightseg segment``
starts fast and works without them. User errors (LightSegError) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import LightSegError

COMMAND_MODULES = [
    "LightSegLib.commands.segment",
    "LightSegLib.commands.models",
    "LightSegLib.commands.demo",
    "LightSegLib.commands.train",
    "LightSegLib.commands.export",
    "LightSegLib.commands.evaluate",
    "LightSegLib.commands.cardiac_function",
    "LightSegLib.commands.prune",
    "LightSegLib.commands.fold",
    "LightSegLib.commands.distill",
    "LightSegLib.commands.quantize",
    "LightSegLib.commands.bench",
]


# The library's errors name its own arguments; on the command line the same advice names the flags.
API_TO_FLAGS = {"overwrite=True": "--overwrite", "allow_gaps=True": "--allow-gaps", "frame=N": "--frame N",
                "frame=": "--frame "}


def cli_wording(message: str) -> str:
    for api, flag in API_TO_FLAGS.items():
        message = message.replace(api, flag)
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightseg", description="Lightweight CPU medical image segmentation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LightSegError as err:
        print(f"lightseg: error: {cli_wording(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the system refuses (too long, not accessible) before any work started
        where = f"{err.filename}: " if err.filename else ""
        print(f"lightseg: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lightseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
