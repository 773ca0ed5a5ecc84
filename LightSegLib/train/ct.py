"""``python -m LightSegLib.train.ct COMMAND ...`` is ``lightseg COMMAND ...`` (``evaluate``: ``evaluate-ct``): the
spelling of the CT model cards' and the registry's reproduce commands. The CT evaluation is in LightSegLib.evaluate,
publishing in LightSegLib.publish."""
import sys

if __name__ == "__main__":
    from LightSegLib.cli import main

    command, *rest = sys.argv[1:] or ["--help"]
    sys.exit(main([{"evaluate": "evaluate-ct"}.get(command, command), *rest]))
