"""Checkpoints: one self-describing file from which a model rebuilds alone, verified on load.

File layout: a header line ``CLINJEPA-CKPT 1 <sha256 hex of the payload>\\n`` followed by the payload,
a ``torch.save`` of plain containers (tensors, numbers, strings, lists, dicts) so that
``torch.load(weights_only=True)`` can read it without executing code. Configs are stored as plain dicts.
``save_checkpoint``/``load_checkpoint`` are the only two functions that touch the bytes, so signing
(a detached ``.sig`` next to the file) can wrap exactly these two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clin_jepa.curriculum import STORED_DEFAULTS
from clin_jepa.data.stats import Discretization
from clin_jepa.errors import CheckpointError, ConfigError
from clin_jepa.io import atomic_write_bytes
from clin_jepa.models import GROUPS, ClinJEPA, ModelConfig, get_group_state, set_group_state

MAGIC = b"CLINJEPA-CKPT"
VERSION = 1
MAX_HEADER_BYTES = 256
MAX_CHECKPOINT_BYTES = 16 << 30  # the base preset's checkpoints are ~0.8 GB
MAX_ARCHIVE_MEMBERS = 100_000


@dataclass
class Checkpoint:
    """Everything needed to rebuild, evaluate or resume training.

    ``weights`` maps group name (``encoder``, ``target_encoder``, ``predictor``) to its state dict.
    ``discretization`` is ``Discretization.to_dict()`` (numpy arrays are stored as lists; rebuild it
    with :meth:`load_discretization`), ``tasks`` the task names of the labels. ``extra`` is
    free for other parts (privacy accountants, federation state); it must hold plain containers only.
    """

    model_config: ModelConfig
    weights: dict[str, dict[str, torch.Tensor]]
    curriculum: dict[str, Any] = field(default_factory=dict)
    discretization: dict[str, Any] | None = None
    tasks: list[str] = field(default_factory=list)
    step: int = 0
    round: int = 0
    phase: str = ""
    optimizer: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: ClinJEPA, **fields: Any) -> Checkpoint:
        return cls(model.cfg, {g: get_group_state(model, g) for g in GROUPS}, **fields)

    def load_discretization(self) -> Discretization | None:
        """The stored discretization as an object (``None`` when the checkpoint has none)."""
        return None if self.discretization is None else Discretization.from_dict(self.discretization)

    def build_model(self) -> ClinJEPA:
        """A fresh :class:`ClinJEPA` of the stored config with the stored weights loaded."""
        model = ClinJEPA(self.model_config)
        for g in GROUPS:
            set_group_state(model, g, self.weights[g])
        return model


def _plain(obj: Any) -> Any:
    """Numpy values become Python lists/scalars so ``weights_only`` loading accepts them."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` atomically to ``path``; return the payload's sha256 (hex)."""
    payload = {f.name: getattr(ckpt, f.name) for f in dataclasses.fields(ckpt)}
    payload["model_config"] = ckpt.model_config.to_dict()
    for key in ("curriculum", "discretization", "metrics", "extra"):
        payload[key] = _plain(payload[key])
    payload["format_version"] = VERSION
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, MAGIC + f" {VERSION} {digest}\n".encode() + data)
    return digest


def read_checkpoint_file(path: str | Path) -> bytes:
    """The whole file, read once: header first from a bounded read (a huge or sparse file that is no
    checkpoint is never read whole), then a size limit, then the rest. Signature verification and
    decoding both work on these bytes, so nothing can swap the file between them."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with path.open("rb") as fh:
            head = fh.read(MAX_HEADER_BYTES)
            _split_header(path, head)
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"{path}: {size / 2**30:.1f} GiB is larger than any checkpoint this "
                                      f"code writes (at most {MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB)")
            return head + fh.read()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror}") from None


def _split_header(path: Path, raw: bytes) -> tuple[list[bytes], bytes]:
    header, sep, data = raw.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise CheckpointError(f"{path}: not a Clin-JEPA checkpoint (missing '{MAGIC.decode()}' header)")
    return parts, data


def read_verified_payload(path: str | Path, verify: bool = True,
                          raw: bytes | None = None) -> tuple[bytes, str]:
    """The payload bytes and their recorded sha256; raises :class:`CheckpointError` on any mismatch.
    ``raw``: the file's bytes already read (and signature-verified) by the caller."""
    path = Path(path)
    raw = read_checkpoint_file(path) if raw is None else raw
    parts, data = _split_header(path, raw)
    return _check_payload(path, parts, data, verify)


def _check_payload(path: Path, parts: list[bytes], data: bytes, verify: bool) -> tuple[bytes, str]:
    if parts[1] != str(VERSION).encode():
        raise CheckpointError(f"{path}: checkpoint format version {parts[1].decode(errors='replace')} is "
                              f"not supported (this code reads version {VERSION})")
    digest = parts[2].decode(errors="replace")
    if verify and hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path}: content hash mismatch — the file is corrupt or was modified "
                              f"after it was written (recorded sha256 {digest[:16]}…)")
    return data, digest


def _check_archive(path: str | Path, data: bytes) -> None:
    """``torch.save`` writes an uncompressed zip; a compressed member could inflate a small file into
    gigabytes inside ``torch.load`` (a zip bomb), so only stored members within the file's size pass."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: checkpoint payload cannot be decoded (not a torch archive: "
                              f"{exc})") from None
    bad = [m.filename for m in members
           if m.compress_type != zipfile.ZIP_STORED or m.file_size > len(data)]
    if bad or len(members) > MAX_ARCHIVE_MEMBERS:
        raise CheckpointError(f"{path}: checkpoint archive has compressed, oversized or too many members "
                              f"({bad[:3] or len(members)}); torch.save never writes those, refusing to "
                              f"decode it")


# A check of the file's bytes (a signature) that every load in this process must pass, installed by
# :func:`verified_loads`: it runs on the very bytes that are then decoded, so the file cannot be swapped
# between verification and ``torch.load``, and code that loads checkpoints needs no signing arguments.
Verifier = Callable[[Path, bytes], object]
_verifier: Verifier | None = None


@contextlib.contextmanager
def verified_loads(verifier: Verifier) -> Iterator[None]:
    """Within the block, :func:`load_checkpoint` passes every file's bytes to ``verifier`` first."""
    global _verifier
    previous, _verifier = _verifier, verifier
    try:
        yield
    finally:
        _verifier = previous


def load_checkpoint(path: str | Path, verify: bool = True, raw: bytes | None = None) -> Checkpoint:
    """Read (once), verify and decode a checkpoint written by :func:`save_checkpoint` (from ``raw``, the
    file's bytes, when the caller has read them already)."""
    raw = read_checkpoint_file(path) if raw is None else raw
    if _verifier is not None:
        _verifier(Path(path), raw)
    data, _ = read_verified_payload(path, verify, raw)
    return decode_checkpoint(path, data)


def decode_checkpoint(path: str | Path, data: bytes) -> Checkpoint:
    """The checkpoint in ``data`` (a verified payload of the file ``path``, named in errors)."""
    _check_archive(path, data)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for damaged pickles
        raise CheckpointError(f"{path}: checkpoint payload cannot be decoded: {exc}") from None
    try:
        payload.pop("format_version", None)
        # checkpoints written before ``encoder_clock`` (``horizon_heads``) existed fed the clock of day to E
        # (asked for each look-ahead horizon with an embedding)
        cfg = ModelConfig.from_dict({"encoder_clock": True, "horizon_heads": False,
                                     **payload.pop("model_config")})
        if payload.get("curriculum"):
            payload["curriculum"] = {**STORED_DEFAULTS, **payload["curriculum"]}
        weights = payload.pop("weights")
        missing = [g for g in GROUPS if g not in weights]
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks weights for group(s) {missing}")
        return Checkpoint(cfg, weights, **payload)
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: checkpoint content is incomplete or malformed: {exc}") from None


def checkpoint_digest(path: str | Path) -> str:
    """The recorded sha256 of a checkpoint's payload (verified)."""
    return read_verified_payload(path)[1]
