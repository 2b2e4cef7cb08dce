"""A real (non-editable) install: the wheel holds the code and the shipped configurations, and runs
from another folder. An editable install would hide missing package data, so this builds one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args, cwd, site, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a minute or more: CI runs it as its own step (.ci/run)
def test_the_wheel_installs_and_runs_from_another_folder(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Built from a copy of the sources (setuptools writes build/ and *.egg-info next to them).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("dim_ssl", "eval"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The dependencies are this environment's; the wheel is built and installed without them.
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("dim_ssl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"eval/configs/quickstart.yaml", "eval/configs/family_fmnist.yaml", "dim_ssl/head.py"} <= names
    assert not any(n.startswith(("tests/", "runs/")) for n in names)
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    # From another folder, the installed copy (not the repository) is what runs.
    code = "import eval, dim_ssl; print(eval.__file__, dim_ssl.__file__)"
    where = _run([sys.executable, "-c", code], elsewhere, site)
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(site)) for path in where.stdout.split()), where.stdout
    helped = _run([str(site / "bin" / "dim-ssl"), "--help"], elsewhere, site)
    assert helped.returncode == 0 and "pretrain" in helped.stdout, helped.stderr
    # A shipped configuration by name, read from the installed package.
    named = _run(
        [
            sys.executable,
            "-c",
            "from eval.training.config import find_config, resolve_config;"
            "print(find_config('quickstart')); print(resolve_config('quickstart')['method']['name'])",
        ],
        elsewhere,
        site,
    )
    assert named.returncode == 0, named.stderr[-2000:]
    assert named.stdout.split() == [str(site / "eval" / "configs" / "quickstart.yaml"), "dim"]
    # The README's multi-view training loop, as a user would paste it.
    block = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)[1]
    readme = _run([sys.executable, "-c", block], elsewhere, site)
    assert readme.returncode == 0, readme.stderr[-3000:]
    assert "cross-view local MI" in readme.stdout
