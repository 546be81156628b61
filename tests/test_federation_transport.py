"""Reduced-precision replies (float16 by default, bfloat16, float32) and the client-side clipping bound
after the cast, per-round site sampling and the device/compile run-config keys (pure functions of
clin_jepa.federation; the Flower round trip is in test_flower_sim.py and test_privacy_flower.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from client.site import Site
from clin_jepa.config import load_site_config
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig, sample_sites
from clin_jepa.models import ClinJEPA, get_group_state, preset
from clin_jepa.transport import _to_wire, decode_reply, encode_reply, update_norm


def _weights(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = ClinJEPA(preset("tiny"))
    return {f"predictor.{k}": v.numpy() for k, v in get_group_state(model, "predictor").items()}


def test_float16_update_round_trip_is_close_and_half_the_bytes():
    sent = _weights(0)
    rng = np.random.default_rng(0)
    trained = {k: v + rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in sent.items()}
    wire = encode_reply(trained, sent, "float16")
    assert all(v.dtype == np.float16 for v in wire.values())
    assert sum(v.nbytes for v in wire.values()) * 2 == sum(v.nbytes for v in trained.values())
    back = decode_reply(wire, sent)
    for k, v in trained.items():
        assert back[k].dtype == np.float32
        update = v - sent[k]
        # the update survives to float16 precision; casting the weights themselves would not
        assert np.max(np.abs(back[k] - v)) <= 1e-3 * np.max(np.abs(update)) + 1e-7
    weights_cast = {k: v.astype(np.float16).astype(np.float32) for k, v in trained.items()}
    worst_cast = max(np.max(np.abs(weights_cast[k] - trained[k])) for k in trained)
    worst_update = max(np.max(np.abs(back[k] - trained[k])) for k in trained)
    assert worst_update < worst_cast / 10


def test_float32_transport_sends_the_weights_unchanged():
    sent = _weights(0)
    trained = _weights(1)
    wire = encode_reply(trained, sent, "float32")
    assert all(np.array_equal(wire[k], trained[k]) for k in trained)
    assert all(np.array_equal(decode_reply(wire, sent)[k], trained[k]) for k in trained)


def test_decode_leaves_mismatched_arrays_for_the_screen():
    sent = {"a": np.zeros((2, 3), np.float32)}
    odd = {"a": np.zeros((3, 2), np.float16), "b": np.ones(2, np.float16)}
    out = decode_reply(odd, sent)
    assert out["a"].dtype == np.float16 and out["a"].shape == (3, 2) and out["b"].dtype == np.float16


def test_nan_update_stays_non_finite():
    sent = {"a": np.ones(4, np.float32)}
    wire = encode_reply({"a": np.array([1, np.nan, 1, 1], np.float32)}, sent, "float16")
    assert not np.isfinite(decode_reply(wire, sent)["a"]).all()


def test_server_decodes_a_flower_reply_in_place():
    from server.server_app import decode_updates

    sent = _weights(0)
    trained = {k: v + np.float32(1e-3) for k, v in sent.items()}
    wire = encode_reply(trained, sent, "float16")
    meta = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=0, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in wire.items()})
    msg = Message(metadata=meta, content=RecordDict({"arrays": arrays,
                                                     "metrics": MetricRecord({"num-examples": 4})}))
    decode_updates(msg, sent)
    got = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    assert all(got[k].dtype == np.float32 and np.allclose(got[k], trained[k], atol=1e-6) for k in trained)


@pytest.mark.parametrize("fraction,min_sites,expected", [(1.0, 2, 50), (0.2, 2, 10), (0.01, 3, 3),
                                                         (0.5, 2, 25)])
def test_sampling_size_and_determinism(fraction, min_sites, expected):
    cfg = FederationConfig(fraction_train=fraction, min_sites=min_sites)
    nodes = [2**64 - 1 - 7919 * i for i in range(50)]  # Flower node ids are unsigned 64-bit
    picked = sample_sites(nodes, 3, cfg)
    assert len(picked) == expected and len(set(picked)) == expected and set(picked) <= set(nodes)
    assert picked == sample_sites(list(reversed(nodes)), 3, cfg)  # order of node ids does not matter
    if expected < 50:
        rounds = {tuple(sample_sites(nodes, r, cfg)) for r in range(1, 11)}
        assert len(rounds) > 1  # different rounds sample different sites


@pytest.mark.parametrize("key,value,words", [
    ("fraction-train", 0.0, "fraction-train"), ("fraction-train", 1.5, "fraction-train"),
    ("transport-dtype", "float8", "transport-dtype"), ("device", "gpu", "run config device"),
])
def test_bad_run_config_values_are_refused(key, value, words):
    with pytest.raises(ConfigError, match=words):
        FederationConfig.from_run_config({key: value})


def test_sampling_with_central_dp_is_refused():
    with pytest.raises(ConfigError, match="fraction-train"):
        FederationConfig.from_run_config({"fraction-train": 0.5, "dp-central": "server-fixed"})


def test_compact_transport_is_the_default_and_float32_stays_selectable():
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    app_config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert FederationConfig().transport_dtype == "float16"
    assert FederationConfig.from_run_config(app_config).transport_dtype == "float16"
    for dtype in ("float32", "float16", "bfloat16"):  # every transport works with client-side clipping
        cfg = FederationConfig.from_run_config({"transport-dtype": dtype, "dp-central": "client-fixed"})
        assert cfg.transport_dtype == dtype


def test_bfloat16_update_round_trip_is_close_and_half_the_bytes():
    sent = _weights(0)
    rng = np.random.default_rng(1)
    trained = {k: v + rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in sent.items()}
    wire = encode_reply(trained, sent, "bfloat16")
    assert all(v.dtype == np.uint16 for v in wire.values())  # bfloat16 bits (NumPy has no bfloat16)
    assert sum(v.nbytes for v in wire.values()) * 2 == sum(v.nbytes for v in trained.values())
    back = decode_reply(wire, sent, "bfloat16")
    for k, v in trained.items():
        update = v - sent[k]
        assert back[k].dtype == np.float32
        assert np.max(np.abs(back[k] - v)) <= 2.0 ** -8 * np.max(np.abs(update)) + 1e-7
    # a float16 reply is not mistaken for bfloat16 bits (and the other way round): the screen sees it
    assert decode_reply(encode_reply(trained, sent, "float16"), sent, "bfloat16")[next(iter(sent))].dtype \
        == np.float16


def _midpoint_attack(rng: np.random.Generator, n: int, dtype: str):
    """(sent, trained, bound, floor): worst-case inputs for the cast, all exactly representable.

    float16 / bfloat16: an update at the bound (float64 norm x (1 + 1e-9)) whose every element sits just
    above a rounding midpoint of ``dtype``, so the cast to nearest rounds every element away from zero.
    float32 (the weights themselves are sent, ``sent + update``): weights in one binade and an update of
    ``m`` ulps per element, with a bound that clipping scales it to ``m - 0.5 + 1/32`` ulps, so that
    ``sent + update`` rounds every element back up to ``m`` ulps. ``floor`` is the least share of the
    bound a guaranteed reply can keep (an update of whole ulps cannot come closer than ``m - 1`` ulps)."""
    sign = rng.choice([-1.0, 1.0], n)
    if dtype == "float32":
        scale = 2.0 ** int(rng.integers(-4, 12))
        sent = (rng.choice([-1.0, 1.0], n) * rng.uniform(1.0, 2.0, n) * scale).astype(np.float32)
        m = int(rng.integers(2, 9))
        update = sign * m * 2.0 ** -23 * scale
        bound = float(np.sqrt(n) * (m - 0.5 + 2.0 ** -5) * 2.0 ** -23 * scale)
        floor = (m - 1) / (m - 0.5 + 2.0 ** -5) * (1 - 1e-3)
    else:
        sent = (rng.integers(-31, 32, n) * 2.0 ** -8).astype(np.float32)  # few bits: sent + update is exact
        exp = rng.integers(-11, -6, n).astype(np.float64)  # normal float16 / bfloat16 range
        mant = 11 if dtype == "float16" else 8  # bits of precision, the implicit one included
        ulp = 2.0 ** (exp - (mant - 1))
        update = sign * (2.0 ** exp + ulp * (rng.integers(0, 2 ** (mant - 1) - 1, n) + 0.5 + 2.0 ** -5))
        bound = float(np.sqrt(np.sum(update ** 2))) * (1 + 1e-9)
        floor = 0.99
    trained = sent.astype(np.float64) + update
    assert np.array_equal(trained.astype(np.float32).astype(np.float64), trained)  # exact inputs
    return {"w": sent}, {"w": trained.astype(np.float32)}, bound, floor


def _naive(trained, sent, dtype, bound):
    """Clip in float32 and cast, without the guarantee (what a site would send without it)."""
    update = {k: trained[k] - sent[k] for k in sent}
    norm = float(np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in update.values())))
    scale = np.float32(min(1.0, bound / norm))
    if dtype == "float32":
        return {k: sent[k] + update[k] * scale for k in sent}
    return decode_reply({k: _to_wire(update[k] * scale, dtype) for k in sent}, sent, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_clipping_bound_holds_after_the_cast_under_attack(dtype):
    """Worst case for the cast: an update at the clipping bound whose every element rounds away from zero.
    Clipping in float32 and casting without the guarantee lands above the bound on every one of these
    inputs; encode_reply never does, keeps the update's direction and no more of its size than rounding
    forces it to give up."""
    naive_over = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        sent, trained, bound, floor = _midpoint_attack(rng, int(rng.integers(20, 3000)), dtype)
        naive_over += update_norm(_naive(trained, sent, dtype, bound), sent) > bound
        got = decode_reply(encode_reply(trained, sent, dtype, clip_norm=bound), sent, dtype)
        norm = update_norm(got, sent)
        assert floor * bound <= norm <= bound, (seed, norm / bound)
        u, v = got["w"].astype(np.float64) - sent["w"], trained["w"].astype(np.float64) - sent["w"]
        assert u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) > 0.999
        # an update from far above the bound gets the same guarantee
        big = {"w": (sent["w"] + 3 * (trained["w"].astype(np.float64) - sent["w"])).astype(np.float32)}
        assert update_norm(decode_reply(encode_reply(big, sent, dtype, clip_norm=bound), sent, dtype),
                           sent) <= bound
    assert naive_over == 100, f"the attack must break the unguarded cast every time ({naive_over}/100 did)"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_clipped_reply_of_a_real_update(dtype):
    sent = _weights(0)
    rng = np.random.default_rng(3)
    trained = {k: v + rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in sent.items()}
    raw = update_norm(trained, sent)
    for bound in (raw / 10, raw * (1 - 1e-6), raw * 2):
        got = decode_reply(encode_reply(trained, sent, dtype, clip_norm=bound), sent, dtype)
        assert update_norm(got, sent) <= bound
        assert update_norm(got, sent) >= 0.99 * min(bound, raw)


def test_non_finite_updates_reach_the_server_unclipped_to_be_rejected():
    sent = {"a": np.ones(4, np.float32)}
    for dtype in ("float16", "bfloat16", "float32"):
        wire = encode_reply({"a": np.array([1, np.nan, 1, 1], np.float32)}, sent, dtype, clip_norm=0.1)
        assert not np.isfinite(decode_reply(wire, sent, dtype)["a"]).all()
    with pytest.raises(ConfigError, match="clipping norm"):
        encode_reply(sent, sent, "float16", clip_norm=0.0)


def test_screen_rejects_an_update_above_the_clipping_norm():
    from server.checks import screen_replies

    sent = _weights(0)
    meta = dict(run_id=1, message_id="", dst_node_id=0, reply_to_message_id="x", group_id="", created_at=0.0,
                ttl=60.0, message_type="train")
    replies = []
    for node, scale in ((1, 1e-3), (2, 1e-3), (3, 2e-3)):
        trained = {k: v + np.float32(scale) for k, v in sent.items()}
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in trained.items()})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 4})})
        replies.append(Message(metadata=Metadata(src_node_id=node, **meta), content=content))
    bound = (update_norm({k: v + np.float32(1e-3) for k, v in sent.items()}, sent)
             + update_norm({k: v + np.float32(2e-3) for k, v in sent.items()}, sent)) / 2
    screened = screen_replies(replies, [1, 2, 3], sent, 10.0, max_update_norm=bound)
    assert [m.metadata.src_node_id for m in screened.accepted] == [1, 2]
    assert "clipping norm" in screened.problems[3][1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_site_refuses_cuda_it_cannot_see(tmp_path):
    from fixtures import random_events, write_meds, write_site_config

    data = write_meds(tmp_path / "data", random_events(12, seed=0, hours=30))
    site = Site(load_site_config(write_site_config(tmp_path / "s.yaml", data, tmp_path / "state", site="s")))
    assert site.device(FederationConfig()).type == "cpu"
    assert site.device(FederationConfig(device="auto")).type == "cpu"
    with pytest.raises(ConfigError, match="run config device: cuda"):
        site.device(FederationConfig(device="cuda"))
    model = site.model(preset("tiny"), FederationConfig())
    assert site.model(preset("tiny"), FederationConfig()) is model  # built once, reused every round


def test_worker_keeps_a_bounded_number_of_sites(tmp_path):
    from fixtures import random_events, write_meds, write_site_config

    from client import site as site_mod

    data = write_meds(tmp_path / "data", random_events(12, seed=0, hours=30))
    paths = [write_site_config(tmp_path / f"s{i}.yaml", data, tmp_path / f"state{i}", site=f"s{i}")
             for i in range(site_mod.MAX_CACHED_SITES + 3)]
    site_mod._SITES.clear()
    first = site_mod.get_site(paths[0])
    assert site_mod.get_site(paths[0]) is first  # cached while recent
    for p in paths[1:]:
        site_mod.get_site(p)
    assert len(site_mod._SITES) == site_mod.MAX_CACHED_SITES
    assert [s.name for s in site_mod._SITES.values()] == [f"s{i}" for i in range(3, len(paths))]
    assert site_mod.get_site(paths[0]) is not first  # dropped, rebuilt from its config
    site_mod._SITES.clear()
