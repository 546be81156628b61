"""Does the code the coordinator shipped in the FAB match the package this site installed?

Flower puts the FAB's directory first on ``sys.path``, so a package the FAB ships shadows the site's
installed and pinned one. This project's FAB ships only the glue (``client/**``, ``server/**``); the core
(``clin_jepa``: DP, the ledger, suppression) comes from the site's install. A FAB may still ship either
package, so on a deployed node the ClientApp compares, before any handler runs:

* the version the FAB declares (its ``pyproject.toml``, ``[project].version``) with the installed
  distribution's version (``importlib.metadata``: the site's own ``clin-jepa`` install), and
* every Python file of the FAB's ``clin_jepa/`` and ``client/`` with the installed package's file of the
  same name, byte for byte (sha256),

and refuses the run when either differs. Limits (deploy/README.md): this check is itself code in the
FAB, so it stops a coordinator who ships another version or edited code by mistake or carelessly, not one
who removes the check; only Flower's FAB signature verification (``flower-supernode
--trusted-entities``) would, and flwr 1.42 verifies signatures only on FABs fetched from Flower Hub.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

DISTRIBUTION = "clin-jepa"
CHECKED_PACKAGES = ("clin_jepa", "client")


def declared_version(app_dir: Path) -> str | None:
    """``[project].version`` of the FAB's ``pyproject.toml``, or None when it has none."""
    try:
        raw = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
        return str(raw["project"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_package_dir(package: str, app_dir: Path) -> Path | None:
    """Where ``package`` would be imported from if the FAB were not on ``sys.path``: the site's install
    (site-packages, or the source tree of an editable install)."""
    app = app_dir.resolve()
    path = [p for p in sys.path if Path(p or ".").resolve() != app]
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        saved, sys.path[:] = list(sys.path), path
        try:
            spec = find(package, None)
        except (ImportError, ValueError, TypeError):
            spec = None
        finally:
            sys.path[:] = saved
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations))).resolve()
    return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class CodeCheck:
    """``reasons`` why the FAB is not this site's code (empty: it is), and how many files were compared."""

    reasons: tuple[str, ...]
    compared: int


@functools.lru_cache(maxsize=8)
def code_mismatch(app_dir: Path) -> CodeCheck:
    """Compare the FAB in ``app_dir`` with the code this site installed. Cached per process: a FAB's files
    do not change while its run lasts."""
    reasons, compared = [], 0
    fab, mine = declared_version(app_dir), installed_version()
    if mine is None:
        reasons.append(f"no installed {DISTRIBUTION} distribution to compare the FAB with")
    elif fab != mine:
        reasons.append(f"the FAB declares {DISTRIBUTION} version {fab}, this site installed {mine}")
    for package in CHECKED_PACKAGES:
        shipped = app_dir / package
        installed = installed_package_dir(package, app_dir)
        if not shipped.is_dir() or installed == shipped.resolve():
            continue  # nothing shipped, or the FAB is this very install (a simulation from the source tree)
        if installed is None:
            reasons.append(f"the FAB ships {package}/ but this site has no installed {package} package")
            continue
        files = sorted(shipped.rglob("*.py"))
        compared += len(files)
        differ = [str(f.relative_to(app_dir)) for f in files
                  if not (installed / f.relative_to(shipped)).is_file()
                  or _digest(installed / f.relative_to(shipped)) != _digest(f)]
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            reasons.append(f"{len(differ)} file(s) of the FAB differ from this site's installed package "
                           f"({installed}): {shown}")
    return CodeCheck(tuple(reasons), compared)
