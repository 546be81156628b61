"""What a site keeps per federated run: validated run ids, paths inside ``state_dir`` only, and the run's
pinned privacy settings.

The run id arrives from the coordinator (``config["run-id"]``), so it is hostile input: it names files in
the hospital's state directory. :func:`check_run_id` admits only short ids of letters, digits, ``_``,
``.`` and ``-`` that do not start with a dot, and :func:`run_path` refuses any path that would resolve
outside ``state_dir`` (symlinks included).

A run's DP settings and ``min-patients`` are part of its schedule: the noise was planned for them and the
earlier rounds were released under them. :func:`pin_run_settings` writes them on the site's first round
of a run and refuses any later round (a resume, a restarted node) that arrives with different ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from clin_jepa.errors import ConfigError
from clin_jepa.io import atomic_write_text

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SETTINGS_FILE = "settings.json"


def check_run_id(run_id: object) -> str:
    """``run_id`` when it can safely name a file in the state directory; a :class:`ConfigError` otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(f"run id {run_id!r} is not allowed: a run id is 1-128 letters, digits, '_', '.' "
                          f"or '-', not starting with '.' and without '..' (it names files in the site's "
                          f"state directory)")
    return run_id


def run_path(state_dir: str | Path, *parts: str) -> Path:
    """``state_dir/parts...``, refused when it would resolve outside ``state_dir`` (``..``, an absolute
    part, or a symlink planted inside the state directory)."""
    root = Path(state_dir).resolve()
    path = root.joinpath(*parts)
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ConfigError(f"{path} resolves to {resolved}, outside the site's state directory {root}; "
                          f"refusing to read or write there")
    return path


def pin_run_settings(state_dir: str | Path, run_id: str, settings: dict[str, Any]) -> None:
    """Record ``settings`` for run ``run_id`` on its first round; refuse a later round whose settings differ.

    ``settings`` must be JSON-serializable (DP settings as a dict or None, ``min-patients``).
    """
    path = run_path(state_dir, "federated", check_run_id(run_id), SETTINGS_FILE)
    current = json.loads(json.dumps(settings, sort_keys=True))
    if not path.exists():
        atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True))
        return
    try:
        pinned = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); refusing to continue run {run_id} without knowing "
                          f"the privacy settings its earlier rounds used") from None
    if pinned != current:
        changed = sorted(k for k in set(pinned) | set(current) if pinned.get(k) != current.get(k))
        how = ", ".join(f"{pinned.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(f"run {run_id}: this site's {', '.join(changed)} changed since the run's first "
                          f"round ({how}); "
                          f"the DP settings and min-patients are part of the run's schedule, so a resumed "
                          f"run must keep them. Start a new run to use the new settings.")
