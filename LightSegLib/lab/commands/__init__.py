"""The workshop's CLI sub-commands (``lightseg train``, ``prune``, ``publish``, ...): each module has
``register(subparsers)`` and a ``run(args)``, registered with ``lightseg`` as ``lightseglib.commands`` entry points."""
