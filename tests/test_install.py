"""Tests of the installed program (pyproject.toml, docs/install.md).

What they prove, on a wheel built from this checkout (pip wheel, no dependencies, no network)
and unpacked as pip installs a pure-Python wheel:

* the install adds one top-level name, `entrgi_ref` (the modules inside it), not `run`,
  `models`, `rng`, `rewards`, `sampler`, `experiment` and `entrgi` at the top of site-packages;
* the console script's entry function (`entrgi-run` in [project.scripts]), imported as the
  script imports it, and `python -m entrgi_ref.run`, run from a directory holding a user's
  own `models.py`, `run.py` and `sampler.py` (which raise if imported) -- with that directory
  first on sys.path, the worst case -- use the installed modules: `--dry-run` prints the plan.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["api", "entrgi", "experiment", "models", "prompt_sets", "rewards", "rng", "run", "sampler", "spec", "summaries"]
DRY_RUN = ["--prompt", "Hi", "--dllm", "tiny", "--reward-model", "tiny", "--dry-run"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, str]:
    """(site directory with the unpacked wheel, the console script's entry point 'module:function')."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # the project's files only: a checkout's stale build/ would leak into the wheel
    source.mkdir()
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("*.py")]:
        shutil.copy(path, source)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "--wheel-dir", str(root / "dist"), str(source)], capture_output=True, text=True,
                           timeout=600, cwd=root)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        entry_points = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string((site / entry_points).read_text())
    return site, parser["console_scripts"]["entrgi-run"]


def test_install_adds_one_top_level_name(installed):
    site, _ = installed
    top = sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info"))
    assert top == ["entrgi_ref"]
    assert sorted(p.stem for p in (site / "entrgi_ref").glob("*.py")) == MODULES


@pytest.fixture
def users_directory(tmp_path) -> Path:
    """A working directory with files named as the project's modules, each raising if imported."""
    for name in ("models", "run", "sampler"):
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('the user\\'s own {name}.py was imported')\n")
    return tmp_path


def run_from(directory: Path, site: Path, code: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(directory), str(site)])}
    return subprocess.run([sys.executable, *code, *DRY_RUN], cwd=directory, env=env, capture_output=True, text=True,
                          timeout=600)


def test_console_script_ignores_a_users_same_named_files(installed, users_directory):
    site, entry = installed
    module, function = entry.split(":")
    script = f"import sys; from {module} import {function}; sys.exit({function}())"  # as pip's script does
    done = run_from(users_directory, site, ["-c", script])
    assert done.returncode == 0 and "reward prefix" in done.stdout, done.stderr[-2000:]


def test_python_m_of_the_install_ignores_a_users_same_named_files(installed, users_directory):
    site, _ = installed
    done = run_from(users_directory, site, ["-m", "entrgi_ref.run"])
    assert done.returncode == 0 and "reward prefix" in done.stdout, done.stderr[-2000:]
