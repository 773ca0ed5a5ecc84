"""The Slicer extension's CMake files describe what is really in the tree."""
import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLEAN_ENV, REPO, SHARED_DATA, extension_files, inference_python, segment_path_modules


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


def test_extension_ships_the_runtime_and_only_it(tmp_path):
    """The extension installs part of LightSegLib beside the module: a module missing there breaks Slicer only, and
    workshop code there is dead weight (it needs torch)."""
    listed = set(extension_files())
    assert all((REPO / item).is_file() for item in listed), sorted(i for i in listed if not (REPO / i).is_file())
    files = [f for n, f in segment_path_modules(tmp_path).items() if n.startswith("LightSegLib")]
    imported = {str(Path(f).resolve().relative_to(REPO)) for f in files}
    assert imported <= listed, f"imported by `lightseg segment` but not shipped: {sorted(imported - listed)}"
    workshop = sorted(i for i in listed if i.startswith("LightSegLib/lab/"))
    assert not workshop, f"workshop code shipped: {workshop}"
    runtime = {p.relative_to(REPO).as_posix() for p in (REPO / "LightSegLib").rglob("*.py")
               if "lab" not in p.relative_to(REPO).parts}
    assert runtime <= listed, f"runtime modules not shipped: {sorted(runtime - listed)}"


def _import_targets(path: Path, parts: tuple) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a LightSegLib source file, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            package = parts if path.name == "__init__.py" else parts[:-1]
            package = package[:-1] if package and package[-1] == "__init__" else package
            base = list(package[:len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
            targets = [".".join(base + [a.name]) for a in node.names] if not node.module else [".".join(base)]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module or ""]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets]
    return found


def _library_modules():
    for path in sorted((REPO / "LightSegLib").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield path, parts, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_runtime_never_imports_the_workshop():
    """Two rooms with a door: nothing outside LightSegLib/lab names LightSegLib.lab in an import, anywhere in the
    file; the workshop reaches the runtime's CLI and engine only through entry points (pyproject.toml)."""
    crossing = [f"{'/'.join(parts)}.py:{line}: {target}" for path, parts, _ in _library_modules() if parts[1] != "lab"
                for line, target in _import_targets(path, parts) if target.startswith("LightSegLib.lab")]
    assert not crossing, crossing
    text = "\n".join(p.read_text() for p, parts, _ in _library_modules() if parts[1] != "lab")
    assert "LightSegLib.lab" not in text, "the runtime names the workshop in a string"


def test_library_imports_have_no_circles():
    """Module-level and function-level imports together form no cycle between LightSegLib modules (a package's
    ``__init__`` re-exporting its submodules aside)."""
    modules = {name for _, _, name in _library_modules()}
    graph = {}
    for path, parts, name in _library_modules():
        deps = set()
        for _, target in _import_targets(path, parts):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + ".") and not (
                    path.name == "__init__.py" and target.startswith(name + ".")):
                deps.add(target)
        graph[name] = deps
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


@pytest.fixture(scope="module")
def extension_install(tmp_path_factory):
    """The extension's layout (module folder beside LightSegLib and Resources) in an empty folder, from the CMake
    lists, and a fresh Python with only the inference packages: no editable finder, no repository on the path."""
    install = tmp_path_factory.mktemp("ext") / "qt-scripted-modules"
    cmake = (REPO / "LightSeg" / "CMakeLists.txt").read_text()
    module = cmake_list(cmake, "MODULE_PYTHON_SCRIPTS") + cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    copies = [(REPO / item, install / item) for item in extension_files()]
    copies += [(REPO / "LightSeg" / item, install / item) for item in module]
    for source, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return install, inference_python(tmp_path_factory.mktemp("env"))


@pytest.mark.slow
def test_the_extension_layout_runs_every_runtime_command(extension_install, tmp_path):
    """`lightseg models`, `segment`, `classify`, `cardiac-function`, `refine` and `demo` from the extension's files
    alone, with a Python that has only numpy, SimpleITK, onnxruntime, jsonschema and tqdm."""
    install, python = extension_install
    env = {**CLEAN_ENV, "PYTHONPATH": str(install), "PYTHONNOUSERSITE": "1"}

    def lightseg(*args):
        return subprocess.run([str(python), "-m", "LightSegLib.cli", *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=300)

    where = subprocess.run([str(python), "-c", "import LightSegLib, importlib.util as u; print(LightSegLib.__file__);"
                            "print(u.find_spec('torch') is not None, u.find_spec('LightSegLib.lab') is not None)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.splitlines()
    assert where == [str(install / "LightSegLib" / "__init__.py"), "False False"], where
    shown = lightseg("--help")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.split("COMMAND", 1)[1]
    assert "segment" in listed and "models" in listed and "train" not in listed and "prune" not in listed, listed
    models = lightseg("models")
    assert models.returncode == 0 and "liver-ct" in models.stdout and "s/volume measured on" in models.stdout, (
        models.stdout + models.stderr)
    assert "\nclick-refine " in models.stdout.split("\nclick models", 1)[1], models.stdout
    samples = install / "Resources" / "Samples"
    for phase in ("ED", "ES"):
        run = lightseg("segment", "--model", "cardiac-acdc", "--threads", "1",
                       samples / f"acdc_patient002_{phase}.nii.gz", tmp_path / f"{phase}.nii.gz")
        assert run.returncode == 0 and (tmp_path / f"{phase}.nii.gz").is_file(), run.stderr
    function = lightseg("cardiac-function", "--json", "--ed", tmp_path / "ED.nii.gz", "--es", tmp_path / "ES.nii.gz")
    assert function.returncode == 0, function.stderr
    assert 10 < json.loads(function.stdout)["lv_ef_percent"] < 80, function.stdout  # patient002: dilated, EF ~28%
    # the click model shipped beside the others: the LV from one click at its deepest point on slice 5, propagated
    refined = lightseg("refine", samples / "acdc_patient002_ED.nii.gz", tmp_path / "lv.nii.gz", "--click", "108,127,5",
                       "--propagate", "--threads", "1", "--json")
    assert refined.returncode == 0, refined.stderr
    assert json.loads(refined.stdout)["voxels"] > 5000 and (tmp_path / "lv.nii.gz").is_file(), refined.stdout
    demo = lightseg("demo", "--out", tmp_path / "demo", "--threads", "2")
    assert demo.returncode == 0, demo.stderr
    assert len(list((tmp_path / "demo").glob("*.seg.nrrd"))) >= 3, sorted((tmp_path / "demo").iterdir())
    xray = SHARED_DATA / "chest_xray" / "train" / "NORMAL"
    if xray.is_dir():  # the extension carries no X-ray sample: one from the shared data, where it is
        image = sorted(xray.glob("*.jpeg"))[0]
        classified = lightseg("classify", "--model", "pneumonia-cxr", "--json", image)
        assert classified.returncode == 0, classified.stderr
        assert json.loads(classified.stdout)[0]["label"] in ("NORMAL", "PNEUMONIA"), classified.stdout
    train = lightseg("train", "--config", "x.toml")
    assert train.returncode == 2 and "invalid choice" in train.stderr, train.stderr


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
