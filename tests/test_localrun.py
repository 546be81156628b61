"""clin_jepa.localrun's shortcuts around Flower and Ray (bench/fl_overhead.py): the staged app builds the
same FAB as the checkout, and the Ray runtime-env hook drops only a runtime env the workers inherit anyway."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from clin_jepa.localrun import one_wave_cpus, ray_runtime_env_hook, stage_app

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fakeapp"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "tester"

[tool.flwr.app.components]
serverapp = "app.server:app"
clientapp = "app.client:app"

[tool.flwr.app.config]
num-rounds = 1
"""


def _project(root: Path) -> Path:
    files = {"pyproject.toml": PYPROJECT, ".gitignore": "/data/\n.venv/\nbuild/\n*.egg-info/\n",
             "README.md": "# fake\n", "app/__init__.py": "", "app/server.py": "app = None\n",
             "app/client.py": "app = None\n", "app/conf/site.yaml": "a: 1\n",
             "app/notes.txt": "not in a FAB\n",
             "app/__pycache__/server.cpython-311.pyc": "x", "tests/test_x.py": "def test(): pass\n",
             "data/rows.json": "{}", "data/nested/more.py": "x = 1\n", ".venv/lib/site.py": "x = 1\n",
             ".venv/pyvenv.cfg": "home = /x\n", "build/lib/app/server.py": "app = None\n",
             "fake.egg-info/PKG-INFO": "x", "docs/guide.md": "# guide\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    os.symlink(root / "app" / "server.py", root / "app" / "link.py")
    return root


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # flwr's own .gitignore reading
def test_the_staged_app_builds_the_same_fab_without_the_ignored_folders(tmp_path):
    app = _project(tmp_path / "checkout")
    staged = stage_app(app, tmp_path / "staged")
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
    names = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert not any(n.startswith(("data/", ".venv/", "build/", "fake.egg-info/")) or "__pycache__" in n
                   for n in names)
    assert {"pyproject.toml", ".gitignore", "app/server.py", "app/conf/site.yaml"} <= names
    assert "app/link.py" not in names  # symbolic links are left out, as flwr does
    (app / "app" / "server.py").write_text("app = 1\n")  # restaged from scratch: never stale
    assert build_fab_from_disk(stage_app(app, tmp_path / "staged")) == build_fab_from_disk(app)


def test_ray_hook_drops_only_a_runtime_env_the_workers_inherit(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/a:/b")
    assert ray_runtime_env_hook({"env_vars": {"PYTHONPATH": "/a:/b"}}) == {}
    assert ray_runtime_env_hook(None) is None and ray_runtime_env_hook({}) == {}
    kept = [{"env_vars": {"PYTHONPATH": "/other"}}, {"env_vars": {"PYTHONPATH": "/a:/b", "X": "1"}},
            {"env_vars": {"PYTHONPATH": "/a:/b"}, "pip": ["x"]}, {"working_dir": "."}]
    for env in kept:
        assert ray_runtime_env_hook(env) == env


@pytest.mark.parametrize("cores,sites,want", [(2, 3, 3), (2, 2, None), (2, 4, None), (4, 6, 6), (4, 7, None),
                                              (1, 1, None)])
def test_a_small_federation_trains_in_one_wave(monkeypatch, cores, sites, want):
    """Ray gets enough logical CPUs for every site at once only when that over-subscribes the cores by
    at most half (3 hospitals on 2 cores); otherwise it keeps its own count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert one_wave_cpus(sites) == want
