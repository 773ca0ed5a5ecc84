"""The registry, the ONNX models and the samples live at the repository root, where a source checkout and the
Slicer extension read them; the wheel carries them inside the package (LightSegLib/Resources/...), where
``registry.resources_dir`` looks first. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

RESOURCES = {"LightSegLib.Resources.Models": "Resources/Models", "LightSegLib.Resources.Samples": "Resources/Samples"}

setup(packages=find_packages(include=["LightSegLib*"]) + list(RESOURCES), package_dir=RESOURCES)
