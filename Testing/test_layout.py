"""The Slicer extension's CMake files describe what is really in the tree."""
import re
from pathlib import Path

import pytest

from conftest import REPO, segment_path_modules


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


def test_extension_ships_the_inference_path_and_only_it(tmp_path):
    """The extension installs part of LightSegLib beside the module: a module missing there breaks Slicer only, and
    training or compression code there is dead weight."""
    text = (REPO / "LightSeg" / "CMakeLists.txt").read_text()
    listed = set(cmake_list(text, "LIGHTSEGLIB_PYTHON_SCRIPTS"))
    assert all((REPO / item).is_file() for item in listed), sorted(i for i in listed if not (REPO / i).is_file())
    files = [f for n, f in segment_path_modules(tmp_path).items() if n.startswith("LightSegLib")]
    imported = {str(Path(f).resolve().relative_to(REPO)) for f in files}
    assert imported <= listed, f"imported by `lightseg segment` but not shipped: {sorted(imported - listed)}"
    training = sorted(i for i in listed if i.split("/")[1] in ("train", "compress", "data", "nets"))
    assert not training, f"training code shipped: {training}"


def test_the_extensions_lightseg_lists_and_runs_only_what_it_ships(tmp_path):
    """LightSegLib as the extension installs it (the listed scripts beside Resources/): `lightseg --help` lists the
    commands that are there, and `lightseg segment` runs from it alone."""
    import os
    import shutil
    import subprocess
    import sys

    install = tmp_path / "qt-scripted-modules"
    for item in cmake_list((REPO / "LightSeg" / "CMakeLists.txt").read_text(), "LIGHTSEGLIB_PYTHON_SCRIPTS"):
        (install / item).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / item, install / item)
    (install / "Resources").symlink_to(REPO / "Resources")
    env = {**os.environ, "PYTHONPATH": str(install)}
    env.pop("LIGHTSEG_MODELS_DIR", None)

    def lightseg(*args):
        return subprocess.run([sys.executable, "-m", "LightSegLib.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)

    shown = lightseg("--help")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.split("COMMAND", 1)[1]
    assert "segment" in listed and "models" in listed and "train" not in listed and "prune" not in listed, listed
    sample = REPO / "Resources" / "Samples" / "acdc_patient002_ED.nii.gz"
    run = lightseg("segment", "--model", "cardiac-acdc", "--threads", "1", str(sample), str(tmp_path / "ed.nrrd"))
    assert run.returncode == 0 and (tmp_path / "ed.nrrd").is_file(), run.stderr
    where = subprocess.run([sys.executable, "-c", "import LightSegLib; print(LightSegLib.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.strip()
    assert where == str(install / "LightSegLib" / "__init__.py")


def test_no_library_module_imports_the_command_line():
    """The CLI (cli.py, commands/) sits on top: below it nothing imports it (a ``python -m`` entry point's
    ``__main__`` block is itself command line)."""
    import ast

    upward = []
    for path in sorted((REPO / "LightSegLib").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[1] in ("cli", "commands"):
            continue
        tree = ast.parse(path.read_text())
        main_blocks = {id(n) for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
                       for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in main_blocks or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(parts[:len(parts) - node.level]) + (node.module.split(".") if node.module else [])
                targets = [".".join(base + [a.name]) for a in node.names] if not node.module else [".".join(base)]
            else:
                targets = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            upward += [f"{'/'.join(parts)}: {t}" for t in targets
                       if t.startswith(("LightSegLib.cli", "LightSegLib.commands"))]
    assert not upward, upward
