"""Errors a user can act on: the CLI prints them on one line and exits with code 2."""


class LightSegError(Exception):
    """A problem with the user's input, model or output path (not a bug)."""


class Cancelled(LightSegError):
    """The caller's cancel flag was raised while work was running."""


class LightSegWarning(UserWarning):
    """Something the caller should hear about (an odd input, an assumption made) that does not stop the work."""
