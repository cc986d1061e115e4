"""Packaging and startup: the wheel ships every package and its data, a non-editable install works from anywhere,
the CLI starts without the heavy libraries, and no subpackage shadows an API function.

The install tests build a wheel from a copy of the source tree (building in place would write ``build/`` and
``edgeprune.egg-info`` into the working tree, and a stale ``build/lib`` can leak deleted modules into a wheel),
then install it with ``--no-deps`` into a fresh virtual environment. The dependencies are not downloaded: the new
environment sees this environment's site-packages through a ``.pth`` file pointing at a directory of symlinks that
leaves out the editable ``edgeprune`` (its ``__editable__*`` finder and ``.pth``, its ``.dist-info``). Nothing here
needs the network: the build uses the setuptools already installed (``--no-build-isolation --no-index``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "edgeprune"
HEAVY = ("torch", "transformers", "onnxruntime")
API_FUNCTIONS = ("profile", "prune", "export", "quantize", "check")
STARTUP_BOUND_S = 5.0
# Left out of the copied tree: environments, VCS data, caches and build leftovers (mirrors .gitignore).
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", "edgeprune-out",
                                     ".pytest_cache", ".ruff_cache", ".hypothesis")


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200", PYTHONNOUSERSITE="1", **extra)
    return env


# --- the wheel ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE, symlinks=True)
    out = work / "dist"
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out)]
    if importlib.util.find_spec("setuptools") is not None:
        args += ["--no-build-isolation", "--no-index"]  # build with the installed backend: fully offline
    # else: pip fetches the build backend declared in pyproject.toml from the configured index.
    _ok(_run([*args, str(source)], cwd=work, env=_clean_env()))
    wheels = sorted(out.glob("edgeprune-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _source_packages() -> list[str]:
    return sorted(p.parent.relative_to(REPO).as_posix() for p in PACKAGE_DIR.rglob("__init__.py")
                  if "__pycache__" not in p.parts)


def test_wheel_ships_every_package_and_its_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    packages = _source_packages()
    assert {"edgeprune", "edgeprune/device_profiles", "edgeprune/data", "edgeprune/models"} <= set(packages)
    missing_packages = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing_packages, f"subpackages missing from {wheel.name}: {missing_packages}"

    modules = sorted(p.relative_to(REPO).as_posix() for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    assert not [m for m in modules if m not in names], "modules missing from the wheel"

    profiles = sorted(p.relative_to(REPO).as_posix() for p in (PACKAGE_DIR / "device_profiles").glob("*.yaml"))
    texts = sorted(p.relative_to(REPO).as_posix() for p in (PACKAGE_DIR / "data").glob("*.txt"))
    assert "edgeprune/device_profiles/rpi5.yaml" in profiles and texts
    missing_data = [f for f in [*profiles, *texts] if f not in names]
    assert not missing_data, f"package data missing from {wheel.name}: {missing_data}"
    assert "edgeprune = edgeprune.cli:app" in entry_points


# --- a fresh, non-editable install ---------------------------------------------------------------------------------


def _is_editable_edgeprune(name: str) -> bool:
    return name.startswith(("__editable__", "edgeprune", "__pycache__")) or name.endswith(".pth")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    root = tmp_path_factory.mktemp("install")
    venv = root / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root))
    python = venv / "bin" / "python"
    purelib = Path(_ok(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            cwd=root, env=_clean_env())).stdout.strip())

    # The dependencies, without the editable edgeprune: one symlink per entry of this environment's site-packages.
    deps = root / "deps"
    deps.mkdir()
    for site_dir in map(Path, site.getsitepackages()):
        for entry in site_dir.iterdir():
            if not _is_editable_edgeprune(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (purelib / "_edgeprune_test_deps.pth").write_text(f"{deps}\n", encoding="utf-8")

    _ok(_run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
              "--no-cache-dir", str(wheel)], cwd=root, env=_clean_env()))
    assert (venv / "bin" / "edgeprune").is_file()
    return venv


def _in_venv(venv: Path, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return _ok(_run(args, cwd=tmp_path, env=env))  # tmp_path: a working directory outside the repository


def test_installed_cli_runs_outside_the_repo(fresh_venv: Path, tmp_path: Path) -> None:
    assert REPO not in tmp_path.parents
    script = str(fresh_venv / "bin" / "edgeprune")
    help_text = _in_venv(fresh_venv, [script, "--help"], tmp_path).stdout
    assert "profiles" in help_text and "prune" in help_text
    listing = _in_venv(fresh_venv, [script, "profiles", "list"], tmp_path).stdout
    assert "rpi5" in listing and "x86-avx2-server" in listing


def test_installed_package_is_the_wheel_not_the_checkout(fresh_venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.metadata as md, importlib.resources as res, json\n"
            "import edgeprune\n"
            "print(edgeprune.__file__)\n"
            "edgeprune.load_model\n"
            "import edgeprune.models.loading as loading\n"
            "print(json.dumps({'package': edgeprune.__file__, 'loading': loading.__file__,\n"
            "                  'dist': str(md.distribution('edgeprune').locate_file('')),\n"
            "                  'profiles': sorted(p.name for p in res.files('edgeprune.device_profiles').iterdir())}))")
    stdout = _in_venv(fresh_venv, [str(fresh_venv / "bin" / "python"), "-c", code], tmp_path).stdout
    found = json.loads(stdout.strip().splitlines()[-1])
    print(found)
    venv = fresh_venv.resolve()
    for key in ("package", "loading", "dist"):
        path = Path(found[key]).resolve()
        assert venv in path.parents and REPO not in path.parents, f"{key} resolved to {path}, not inside {venv}"
    assert "rpi5.yaml" in found["profiles"]


# --- startup: light imports, quick commands --------------------------------------------------------------------------


def _cli_command() -> list[str]:
    script = Path(sys.executable).parent / "edgeprune"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from edgeprune.cli import app; app()"]


@pytest.mark.parametrize("argv", [None, ["--help"], ["profiles", "list"]], ids=["import", "help", "profiles-list"])
def test_cli_does_not_import_heavy_libraries(argv: list[str] | None, tmp_path: Path) -> None:
    """``import edgeprune.cli``, ``edgeprune --help`` and ``edgeprune profiles list`` leave torch & co. unloaded."""
    code = ("import json, sys\n"
            "import edgeprune.cli\n"
            f"argv = {argv!r}\n"
            "if argv is not None:\n"
            "    sys.argv = ['edgeprune', *argv]\n"
            "    try:\n"
            "        edgeprune.cli.app()\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code in (0, None), exc.code\n"
            f"print('\\nHEAVY=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    result = _ok(_run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env()))
    loaded = json.loads(result.stdout.rsplit("HEAVY=", 1)[1])
    assert loaded == [], f"edgeprune {' '.join(argv or ['(import)'])} imported {loaded}"


@pytest.mark.parametrize("argv", [["--help"], ["profiles", "list"]], ids=["help", "profiles-list"])
def test_cli_starts_quickly(argv: list[str], tmp_path: Path) -> None:
    command = [*_cli_command(), *argv]
    start = time.perf_counter()
    _ok(_run(command, cwd=tmp_path, env=_clean_env(), timeout=60))
    elapsed = time.perf_counter() - start
    print(f"edgeprune {' '.join(argv)}: {elapsed:.2f} s")
    assert elapsed < STARTUP_BOUND_S, f"edgeprune {' '.join(argv)} took {elapsed:.2f} s (bound {STARTUP_BOUND_S} s)"


# --- the API facade --------------------------------------------------------------------------------------------------


def test_api_functions_survive_importing_every_module(tmp_path: Path) -> None:
    """After importing every module of the package, ``edgeprune.prune`` & co. are still the API functions."""
    code = ("import importlib, inspect, json, pkgutil, types, edgeprune\n"
            "def fail(name):\n"
            "    raise ImportError(f'cannot import {name}')\n"
            "names = [m.name for m in pkgutil.walk_packages(edgeprune.__path__, 'edgeprune.', onerror=fail)]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            f"api = {API_FUNCTIONS!r}\n"
            "print('\\nRESULT=' + json.dumps({\n"
            "    'modules': names,\n"
            "    'not_functions': {n: repr(getattr(edgeprune, n)) for n in api\n"
            "                      if not inspect.isfunction(getattr(edgeprune, n))},\n"
            "    'modules_in_api': [n for n in edgeprune.__all__\n"
            "                       if isinstance(getattr(edgeprune, n), types.ModuleType)],\n"
            "}))\n")
    result = _ok(_run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env()))
    found = json.loads(result.stdout.rsplit("RESULT=", 1)[1])
    source_modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                      for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts} - {"edgeprune"}
    assert source_modules <= set(found["modules"]), sorted(source_modules - set(found["modules"]))
    assert not found["not_functions"], f"API names shadowed after importing every module: {found['not_functions']}"
    assert not found["modules_in_api"], f"API names that are modules: {found['modules_in_api']}"
