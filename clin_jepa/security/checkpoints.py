"""What a signed checkpoint must also prove: that it is the file it claims to be.

A signature alone only says "the coordinator once wrote these bytes". The ServerApp therefore signs each
file with its context — run id, round, and role (``round`` for ``round_XXXX.pt``, ``latest`` for
``ckpt.pt``) — and :func:`checkpoint_verifier` refuses, on the bytes about to be loaded:

* a file whose signed role or round contradicts its name (``round_0002.pt`` copied over ``ckpt.pt``);
* a ``ckpt.pt`` older than a signed round of the same run next to it (a rollback);
* a ``ckpt.pt`` of another run than the signed rounds next to it.

Files signed by hand (``clin-jepa sign``) carry no role; only the signature is checked for them.
The sibling ``.sig`` files are read without verifying their signatures: they can only cause a refusal,
never an acceptance, and forging one is no more than deleting the checkpoint would achieve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from clin_jepa.errors import CheckpointError
from clin_jepa.security.signing import SIG_SUFFIX, verify_file

LATEST_NAME = "ckpt.pt"
_ROUND_FILE = re.compile(r"round_(\d{4,})\.pt")


def signing_context(run_id: str, rnd: int, path: Path) -> dict[str, Any]:
    """The context the ServerApp binds into the signature of ``path`` (a per-round file or ``ckpt.pt``)."""
    return {"run": run_id, "round": int(rnd), "role": "latest" if path.name == LATEST_NAME else "round"}


def _sibling_contexts(folder: Path) -> list[dict[str, Any]]:
    out = []
    for sig in folder.glob(f"round_*.pt{SIG_SUFFIX}"):
        try:
            context = json.loads(sig.read_text(encoding="utf-8")).get("context")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(context, dict) and "run" in context and isinstance(context.get("round"), int):
            out.append(context)
    return out


def check_context(path: Path, context: dict[str, Any]) -> None:
    """Refuse ``path`` when its signed ``context`` contradicts its name or the signed rounds beside it."""
    if "role" not in context:
        return
    role, rnd, run = context.get("role"), context.get("round"), context.get("run")
    named = _ROUND_FILE.fullmatch(path.name)
    if path.name == LATEST_NAME and role != "latest" or named and (role != "round" or int(named[1]) != rnd):
        raise CheckpointError(f"{path} carries the signature of a {role!r} file of round {rnd} of run {run}; "
                              f"a checkpoint was copied over another (rollback or swap). Refusing it.")
    if role != "latest":
        return
    siblings = _sibling_contexts(path.parent)
    foreign = sorted({str(c["run"]) for c in siblings} - {str(run)})
    if foreign:
        raise CheckpointError(f"{path} is signed for run {run}, but the signed rounds beside it belong to "
                              f"run(s) {foreign}: a checkpoint of another run was put here. Refusing it.")
    newer = max((c["round"] for c in siblings), default=rnd)
    if newer > rnd:
        raise CheckpointError(f"{path} is signed as round {rnd} of run {run}, but round {newer} of the same "
                              f"run is signed beside it: an older checkpoint replaced the latest "
                              f"(rollback). Refusing it.")


def checkpoint_verifier(public_key_path: str | Path) -> Any:
    """A :data:`clin_jepa.checkpoint.Verifier`: signature over the bytes to be loaded, then context."""

    def verify(path: Path, raw: bytes) -> dict[str, Any]:
        context = verify_file(path, public_key_path, data=raw)
        check_context(path, context)
        return context

    return verify
