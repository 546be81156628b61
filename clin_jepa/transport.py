"""What travels in a round: arrays packed without pickling, wire names ``<group>.<param>``, and a site's
reply encoded for ``transport-dtype`` (the round's update in float16 / bfloat16, with client-side clipping
applied in float32 and guaranteed after the cast). Pure NumPy; the server and the sites share it."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np

from clin_jepa.errors import ConfigError


def update_norm(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``new - old`` over all tensors (the size of a client's update)."""
    total = 0.0
    for k, v in new.items():
        d = np.asarray(v, dtype=np.float64) - np.asarray(old[k], dtype=np.float64)
        total += float(np.sum(d * d))
    return float(np.sqrt(total))


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as one ``.npz`` blob (no pickling), for read-only groups sent next to the trained ones."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def split_groups(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"encoder.layer.w": a}`` -> ``{"encoder": {"layer.w": a}}`` (wire names are ``<group>.<param>``)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        group, _, name = key.partition(".")
        out.setdefault(group, {})[name] = value
    return out


def join_groups(groups: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{g}.{k}": v for g, state in groups.items() for k, v in state.items()}


# How many times encode_reply shrinks a clipped update whose cast came out above the bound before it sends a
# zero update instead (a shrink by the overshoot plus a margin that doubles each time converges in 1-2).
_MAX_SHRINKS = 30


def _to_wire(update: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 update in the wire format: float16, or bfloat16 as its 16 bits in a uint16 array (NumPy
    has no bfloat16; rounding to nearest even, NaN kept NaN)."""
    if dtype == "float16":
        return update.astype(np.float16)
    bits = np.ascontiguousarray(update, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(update), np.uint16(0x7FC0), rounded).astype(np.uint16)


def _from_wire(wire: np.ndarray) -> np.ndarray:
    if wire.dtype == np.uint16:  # bfloat16 bits
        return (wire.astype(np.uint32) << 16).view(np.float32)
    return wire.astype(np.float32)


def _is_update(v: np.ndarray, ref: np.ndarray | None, dtype: str) -> bool:
    wire = np.float16 if dtype == "float16" else np.uint16
    return ref is not None and v.dtype == wire and ref.dtype == np.float32 and ref.shape == v.shape


def encode_reply(trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], dtype: str,
                 clip_norm: float | None = None) -> dict[str, np.ndarray]:
    """What a site uploads for ``transport-dtype``: the trained arrays themselves (float32), or the round's
    update ``trained - received`` in float16 / bfloat16 (half the bytes; an update is small, so float16's
    11-bit mantissa keeps it to ~5e-4 relative, where casting the weights would swamp a round's update).

    ``clip_norm`` (client-side fixed clipping, ``dp-central = client-fixed``): the update is clipped in
    float32 to L2 norm ``<= clip_norm`` (Flower's rule, scale by ``min(1, C / norm)``) before the cast, and
    the bound is guaranteed for what the server reconstructs: ``update_norm(decode_reply(reply), received)``,
    in float64 exactly as the server's screen computes it, is ``<= clip_norm``. Rounding to the wire format
    (and, for float32, the sum ``received + update``) can grow a norm that sat at the bound; such an update
    is scaled down and cast again, and if that never fits (it always does in practice) a zero update is
    sent. A non-finite update is sent as it is: the server rejects it.
    """
    floating = {k for k, v in trained.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
    update = {k: np.asarray(trained[k], np.float32) - np.asarray(received[k], np.float32) for k in floating}

    def wire(scale: float | None) -> dict[str, np.ndarray]:
        out = {}
        for k, v in trained.items():
            if k not in floating:
                out[k] = np.asarray(v)
                continue
            u = update[k] if scale is None else (update[k] * np.float32(scale)).astype(np.float32)
            out[k] = (np.asarray(received[k], np.float32) + u if dtype == "float32" else _to_wire(u, dtype))
        return out

    if clip_norm is None:
        return dict(trained) if dtype == "float32" else wire(None)
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"client-side clipping norm must be a positive number, got {clip_norm!r}")
    norm = math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update.values()))
    if not math.isfinite(norm):
        return wire(None)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    margin = 2.0 ** -12
    for _ in range(_MAX_SHRINKS):
        out = wire(scale)
        got = update_norm({k: out[k] for k in floating} if dtype == "float32" else
                          decode_reply({k: out[k] for k in floating}, received, dtype),
                          {k: received[k] for k in floating})
        if got <= clip_norm:
            return out
        scale *= clip_norm / got * (1.0 - margin)
        margin *= 2.0
    return wire(0.0)


def decode_reply(reply: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray],
                 dtype: str = "float16") -> dict[str, np.ndarray]:
    """The server's inverse of :func:`encode_reply` for ``transport-dtype = dtype``: an array in that
    wire format (float16, or uint16 bits for bfloat16) whose name and shape match a sent float32 array is
    an update and becomes ``sent + update`` (float32); anything else is returned as is, so the reply
    screen still rejects what does not fit."""
    if dtype == "float32":
        return dict(reply)
    out = {}
    for k, v in reply.items():
        ref = sent.get(k)
        out[k] = ref + _from_wire(v) if _is_update(v, ref, dtype) else v
    return out
