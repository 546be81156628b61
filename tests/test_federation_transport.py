"""Reduced-precision replies, per-round site sampling and the device/compile run-config keys
(pure functions of clin_jepa.federation; the Flower round trip is in test_flower_sim.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from client.site import Site
from clin_jepa.config import load_site_config
from clin_jepa.errors import ConfigError
from clin_jepa.federation import FederationConfig, decode_reply, encode_reply, sample_sites
from clin_jepa.models import ClinJEPA, get_group_state, preset


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
    ("transport-dtype", "bfloat16", "transport-dtype"), ("device", "gpu", "run config device"),
])
def test_bad_run_config_values_are_refused(key, value, words):
    with pytest.raises(ConfigError, match=words):
        FederationConfig.from_run_config({key: value})


def test_sampling_with_central_dp_is_refused():
    with pytest.raises(ConfigError, match="fraction-train"):
        FederationConfig.from_run_config({"fraction-train": 0.5, "dp-central": "server-fixed"})


def test_float16_with_client_side_clipping_is_refused():
    with pytest.raises(ConfigError, match="client-side clipping"):
        FederationConfig.from_run_config({"transport-dtype": "float16", "dp-central": "client-fixed"})


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
