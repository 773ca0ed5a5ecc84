"""The Slicer extension's CMake files describe what is really in the tree."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def cmake_list(text: str, name: str) -> list[str]:
    """Entries of ``set(NAME a b c)``, with ``${MODULE_NAME}`` expanded."""
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.S)
    assert match, f"{name} is not set"
    module = re.search(r"set\(\s*MODULE_NAME\s+(\S+?)\s*\)", text).group(1)
    body = re.sub(r"#.*", "", match.group(1))
    return [item.replace("${MODULE_NAME}", module).strip('"') for item in body.split()]


def test_extension_cmake_has_the_required_fields():
    text = (REPO / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({field}\s+\S", text), field
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(LightSeg)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line


def test_module_cmake_lists_every_script_and_resource():
    cmake = REPO / "LightSeg" / "CMakeLists.txt"
    if not cmake.is_file():
        pytest.fail("LightSeg/CMakeLists.txt is missing")
    text = cmake.read_text()
    assert "slicerMacroBuildScriptedModule" in text
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = scripts + resources
    missing = [item for item in listed if not (cmake.parent / item).exists()]
    assert not missing, f"listed but absent: {missing}"
    module_py = sorted(str(p.relative_to(cmake.parent)) for p in cmake.parent.rglob("*.py")
                       if "Testing" not in p.parts and "__pycache__" not in p.parts)
    unlisted = [p for p in module_py if p not in scripts]
    assert not unlisted, f"module scripts not listed in MODULE_PYTHON_SCRIPTS: {unlisted}"
    for resource in ("Resources/UI/LightSeg.ui", "Resources/Icons/LightSeg.png"):
        assert resource in resources


def test_extension_ships_every_module_the_inference_path_imports():
    """The extension installs part of LightSegLib beside the module; a module missing there breaks Slicer only."""
    text = (REPO / "LightSeg" / "CMakeLists.txt").read_text()
    listed = set(cmake_list(text, "LIGHTSEGLIB_PYTHON_SCRIPTS"))
    listed |= {str(p.relative_to(REPO)) for p in (REPO / "LightSegLib" / "commands").glob("*.py")}  # the GLOB
    assert all((REPO / item).is_file() for item in listed), sorted(i for i in listed if not (REPO / i).is_file())
    code = ("import sys; import LightSegLib, LightSegLib.inference, LightSegLib.io; "
            "from LightSegLib.cli import build_parser; build_parser(); "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('LightSegLib')))")
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    imported = {str(Path(f).resolve().relative_to(REPO)) for f in files.split()}
    assert imported <= listed, f"imported at start-up but not shipped: {sorted(imported - listed)}"
