"""Python packages inference needs that Slicer does not bundle, installed only through the caller's installer (the
widget passes slicer.util.pip_install behind a consent dialog), so nothing is downloaded without the user's yes."""
from __future__ import annotations

import importlib
import importlib.util

from LightSegLib.errors import LightSegError

#: module name -> pip name (numpy and SimpleITK come with Slicer).
REQUIRED_PACKAGES = {"onnxruntime": "onnxruntime"}


class MissingDependencyError(LightSegError):
    """A package inference needs is not installed and no installer (user consent) was given."""


def missingPackages() -> list[str]:
    return [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]


def ensureDependencies(installer) -> None:
    """Install what is missing with ``installer(packages)``; raise MissingDependencyError when there is none or it
    did not succeed."""
    missing = missingPackages()
    if not missing:
        return
    if installer is None:
        raise MissingDependencyError(f"LightSeg needs {', '.join(missing)}; install it first")
    installer(missing)
    importlib.invalidate_caches()
    still = missingPackages()
    if still:
        raise MissingDependencyError(f"installing {', '.join(still)} did not succeed")
