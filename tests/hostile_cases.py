"""Hostile and careless inputs to every ``clin-jepa`` command, for ``tests/test_hostile_input.py``.

Each case is a function ``(work: Path, site: Path, ckpt: Path) -> argv`` that prepares its inputs under
``work`` (a fresh folder holding a copy of one valid synthetic site, ``site`` its YAML, and ``ckpt`` a
valid tiny checkpoint) and returns the command line. Every case must end with exit code 2, one paragraph
on stderr, no traceback, nothing written under ``work`` and bounded time and memory.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import yaml

Case = Callable[[Path, Path, Path], list[str]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


def edit_yaml(path: Path, **changes: object) -> Path:
    """Rewrite the site YAML with top-level or ``section__key`` changes."""
    site = path
    raw = yaml.safe_load(site.read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            raw.setdefault(section, {})[sub] = value
        else:
            raw[key] = value
    site.write_text(yaml.safe_dump(raw, sort_keys=False))
    return site


# Legitimate configs whose regexes would take 2^40 steps in a backtracking engine: with RE2 they finish fast
# (the test asserts time, exit 0 or 2 and no traceback, in tests/test_hostile_input.py).
SLOW_REGEX_CASES = {"code_map": "code_map", "ignore_codes": "ignore"}


def shard(site: Path) -> Path:
    return next(iter(sorted((site.parent / site.stem).rglob("data/train/*.parquet"))))


def regex_site(site: Path, where: str) -> Path:
    bomb = "(a+)+$"
    if where == "code_map":
        raw = yaml.safe_load(site.read_text())
        raw["code_map"].insert(0, {"regex": bomb, "concept": "heart_rate", "unit": "bpm"})
        site.write_text(yaml.safe_dump(raw, sort_keys=False))
    elif where == "icu_stay":
        edit_yaml(site, icu_stay__start=bomb)
    else:
        edit_yaml(site, ignore_codes=[bomb])
    # a code that makes a backtracking engine explore 2^40 paths
    table = __import__("pyarrow.parquet", fromlist=["x"]).read_table(shard(site))
    codes = table.column("code").to_pylist()
    codes[0] = "a" * 40 + "!"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(table.set_column(table.schema.get_field_index("code"), "code",
                                    pa.array(codes, table.schema.field("code").type)), shard(site))
    return site


def train(s: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--sites", str(s), "--out", str(out), "--preset", "tiny", "--steps", "2",
            "--hours", "24", "--no-progress", *extra]


# --- site config files (validate reads them; train and evaluate share the loader) ------------------------

@case("validate-missing-yaml")
def _(w, s, c): return ["validate", str(w / "nope.yaml")]
@case("validate-yaml-is-a-directory")
def _(w, s, c): return ["validate", str(w)]
@case("validate-non-utf8-yaml")
def _(w, s, c):
    s.write_bytes(s.read_bytes() + b"\n# \xff\xfe caf\xe9\n")
    return ["validate", str(s)]
@case("validate-duplicate-yaml-keys")
def _(w, s, c):
    s.write_text(s.read_text() + f"\nsite: {yaml.safe_load(s.read_text())['site']}_again\n")
    return ["validate", str(s)]
@case("validate-yaml-top-level-list")
def _(w, s, c):
    s.write_text("- a\n- b\n")
    return ["validate", str(s)]
@case("validate-yaml-python-tag")
def _(w, s, c):
    s.write_text("site: !!python/object/apply:os.system ['true']\n")
    return ["validate", str(s)]
@case("validate-yaml-billion-laughs")
def _(w, s, c):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i-1}'] * 10)}]" for i in range(1, 9)]
    s.write_text("\n".join(lines) + "\n")
    return ["validate", str(s)]
@case("validate-yaml-huge-file")
def _(w, s, c):
    with s.open("a") as fh:
        fh.write("#" + "x" * (64 << 20) + "\n")
    return ["validate", str(s)]
@case("validate-site-name-dotdot")
def _(w, s, c): return ["validate", str(edit_yaml(s, site=".."))]
@case("validate-site-name-dot")
def _(w, s, c): return ["validate", str(edit_yaml(s, site="."))]
@case("validate-target-epsilon-inf")
def _(w, s, c): return ["validate", str(edit_yaml(s, privacy__target_epsilon=float("inf")))]
@case("validate-target-epsilon-nan")
def _(w, s, c): return ["validate", str(edit_yaml(s, privacy__target_epsilon=float("nan")))]
@case("validate-max-grad-norm-nan")
def _(w, s, c): return ["validate", str(edit_yaml(s, privacy__max_grad_norm=float("nan")))]
@case("validate-batch-size-huge")
def _(w, s, c): return ["validate", str(edit_yaml(s, training__batch_size=10**15))]
@case("validate-unmapped-share-nan")
def _(w, s, c): return ["validate", str(edit_yaml(s, max_unmapped_share=float("nan")))]
@case("validate-data-path-symlink-loop")
def _(w, s, c):
    (w / "loop").symlink_to(w / "loop")
    return ["validate", str(edit_yaml(s, data__path=str(w / "loop")))]
@case("validate-data-path-is-a-file")
def _(w, s, c): return ["validate", str(edit_yaml(s, data__path=s.name))]
@case("validate-corrupt-parquet")
def _(w, s, c):
    shard(s).write_bytes(b"PAR1" + os.urandom(4096) + b"PAR1")
    return ["validate", str(s)]
@case("validate-empty-parquet-file")
def _(w, s, c):
    shard(s).write_bytes(b"")
    return ["validate", str(s)]
@case("validate-catastrophic-regex-icu-stay")
def _(w, s, c): return ["validate", str(regex_site(s, "icu_stay"))]
@case("validate-regex-too-long")
def _(w, s, c): return ["validate", str(edit_yaml(s, ignore_codes=["a" * 5000]))]
@case("validate-regex-lookahead")
def _(w, s, c): return ["validate", str(edit_yaml(s, ignore_codes=["(?=ADMIN)ADMIN.*"]))]
@case("validate-invalid-regex")
def _(w, s, c): return ["validate", str(edit_yaml(s, icu_stay__start="ICU//(ADMIT"))]

# --- synth ------------------------------------------------------------------------------------------------

@case("synth-out-is-a-file")
def _(w, s, c):
    (w / "f").write_text("x")
    return ["synth", "--out", str(w / "f"), "--sites", "1", "--patients", "10"]
@case("synth-out-not-empty")
def _(w, s, c): return ["synth", "--out", str(w), "--sites", "1", "--patients", "10"]
@case("synth-zero-sites")
def _(w, s, c): return ["synth", "--out", str(w / "o"), "--sites", "0"]
@case("synth-negative-seed")
def _(w, s, c): return ["synth", "--out", str(w / "o"), "--sites", "1", "--seed", "-1"]
@case("synth-huge-patients")
def _(w, s, c): return ["synth", "--out", str(w / "o"), "--sites", "1", "--patients", str(10**12)]
@case("synth-zero-subjects-per-shard")
def _(w, s, c): return ["synth", "--out", str(w / "o"), "--sites", "1", "--subjects-per-shard", "0"]

# --- train ------------------------------------------------------------------------------------------------

@case("train-hours-zero")
def _(w, s, c): return train(s, w / "run", "--hours", "0")
@case("train-steps-negative")
def _(w, s, c): return train(s, w / "run", "--steps", "-5")
@case("train-batch-size-zero")
def _(w, s, c): return train(s, w / "run", "--batch-size", "0")
@case("train-batch-size-huge")
def _(w, s, c): return train(s, w / "run", "--batch-size", str(10**12))
@case("train-lr-nan")
def _(w, s, c): return train(s, w / "run", "--lr", "nan")
@case("train-log-every-zero")
def _(w, s, c): return train(s, w / "run", "--log-every", "0")
@case("train-out-is-a-file")
def _(w, s, c):
    (w / "f").write_text("x")
    return train(s, w / "f")
@case("train-corrupt-parquet")
def _(w, s, c):
    shard(s).write_bytes(b"PAR1" + os.urandom(2048) + b"PAR1")
    return train(s, w / "run")
@case("train-privacy-enabled")
def _(w, s, c): return train(edit_yaml(s, privacy__enabled=True), w / "run")
@case("train-site-name-dotdot")
def _(w, s, c): return train(edit_yaml(s, site=".."), w / "run")
@case("train-resume-missing")
def _(w, s, c): return ["train", "--sites", str(s), "--resume", str(w / "nothing"), "--no-progress"]
@case("train-resume-torn-metrics")
def _(w, s, c):
    run = w / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(c.read_bytes())
    (run / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    return ["train", "--sites", str(s), "--resume", str(run), "--no-progress"]

# --- evaluate ---------------------------------------------------------------------------------------------

def evaluate(ckpt: Path, s: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(ckpt), "--sites", str(s), "--out", str(out), "--no-baselines",
            "--bootstrap", "0", "--quiet", *extra]


@case("evaluate-missing-checkpoint")
def _(w, s, c): return evaluate(w / "none.pt", s, w / "rep")
@case("evaluate-checkpoint-is-a-directory")
def _(w, s, c): return evaluate(w, s, w / "rep")
@case("evaluate-garbage-checkpoint")
def _(w, s, c):
    (w / "g.pt").write_bytes(os.urandom(4096))
    return evaluate(w / "g.pt", s, w / "rep")
@case("evaluate-sparse-2gib-checkpoint")
def _(w, s, c):
    with (w / "big.pt").open("wb") as fh:
        fh.truncate(2 << 30)
    return evaluate(w / "big.pt", s, w / "rep")
@case("evaluate-zip-bomb-checkpoint")
def _(w, s, c):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("archive/data.pkl", "w") as member:
        for _ in range(64):  # 1 GiB of zeros, ~1 MB compressed, written without holding it in memory
            member.write(bytes(16 << 20))
    import hashlib

    data = buf.getvalue()
    header = b"CLINJEPA-CKPT 1 " + hashlib.sha256(data).hexdigest().encode() + b"\n"
    (w / "bomb.pt").write_bytes(header + data)
    return evaluate(w / "bomb.pt", s, w / "rep")
@case("evaluate-corrupt-parquet")
def _(w, s, c):
    shard(s).write_bytes(b"PAR1" + os.urandom(2048) + b"PAR1")
    return evaluate(c, s, w / "rep")
@case("evaluate-negative-bootstrap")
def _(w, s, c): return evaluate(c, s, w / "rep", "--bootstrap", "-1")
@case("evaluate-out-is-a-file")
def _(w, s, c):
    (w / "f").write_text("x")
    return evaluate(c, s, w / "f")
@case("evaluate-unsigned-with-public-key")
def _(w, s, c):
    (w / "k.pub").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    return evaluate(c, s, w / "rep", "--public-key", str(w / "k.pub"))

# --- certs and sign ---------------------------------------------------------------------------------------

@case("certs-out-is-a-file")
def _(w, s, c):
    (w / "f").write_text("x")
    return ["certs", "--out", str(w / "f"), "--host", "h", "--nodes", "1"]
@case("certs-superlink-is-a-file")
def _(w, s, c):
    (w / "pki").mkdir()
    (w / "pki" / "superlink").write_text("x")
    return ["certs", "--out", str(w / "pki"), "--host", "h", "--nodes", "1"]
@case("certs-zero-nodes")
def _(w, s, c): return ["certs", "--out", str(w / "pki"), "--host", "h", "--nodes", "0"]
@case("certs-huge-nodes")
def _(w, s, c): return ["certs", "--out", str(w / "pki"), "--host", "h", "--nodes", str(10**9)]
@case("certs-node-name-traversal")
def _(w, s, c): return ["certs", "--out", str(w / "pki"), "--host", "h", "--node", "../../evil"]
@case("certs-empty-host")
def _(w, s, c): return ["certs", "--out", str(w / "pki"), "--host", "", "--nodes", "1"]
@case("sign-a-directory")
def _(w, s, c):
    (w / "k.key").write_text("x")
    return ["sign", str(w), "--key", str(w / "k.key")]
@case("sign-missing-file")
def _(w, s, c):
    (w / "k.key").write_text("x")
    return ["sign", str(w / "none.pt"), "--key", str(w / "k.key")]
@case("sign-garbage-key")
def _(w, s, c):
    (w / "k.key").write_bytes(os.urandom(300))
    (w / "x.pt").write_bytes(b"x")
    return ["sign", str(w / "x.pt"), "--key", str(w / "k.key")]
@case("sign-missing-key")
def _(w, s, c):
    (w / "x.pt").write_bytes(b"x")
    return ["sign", str(w / "x.pt"), "--key", str(w / "none.key")]
@case("sign-verify-unsigned")
def _(w, s, c):
    (w / "k.pub").write_text("x")
    (w / "x.pt").write_bytes(b"x")
    return ["sign", "--verify", str(w / "x.pt"), "--key", str(w / "k.pub")]
