"""One-shot GPU check, written to be run blind on a CUDA machine within ten minutes.

    # once, on a machine with the package registry (the development container): the wheels the GPU
    # image lacks (Flower, a trimmed Ray, Opacus, ...), pinned to this project's virtual environment
    .venv/bin/python bench/gpu_check.py --fetch-wheels .whl
    # on the GPU machine (its image's python3: PyTorch 2.11, Python 3.12), from the repository root
    python3 bench/gpu_check.py --wheels .whl [--out DIR] [--budget-s 540]

On a machine where torch sees no CUDA device it prints ``no CUDA: skipped`` and exits 0 before touching
anything. Otherwise, in order, each step given what is left of ``--budget-s`` (a step that no longer fits
is reported as skipped, never left half-run):

1. installs the carried wheels into a folder of their own (``--target``, nothing else on the machine
   changes) and re-runs itself with that folder on ``PYTHONPATH``;
2. runs the CUDA tests (``pytest -m cuda``, ``tests/test_cuda.py``) with ``CLIN_JEPA_REQUIRE_CUDA=1``:
   there a missing GPU fails them, so the step passes only if they ran; the step fails on any skip too;
3. trains the ``small`` and ``base`` presets on random batches of the data contract's shape (joint phase:
   ``E`` and ``P`` train) with bf16 autocast and ``torch.compile``, ``--steps`` timed steps after the
   compiling warm-up, and prints step time, patient-hours/s (= tokens/s), FLOPs per step (closed form,
   ``clin_jepa.flops``), achieved FLOP/s and MFU against the GPU's dense bf16 datasheet peak — and against
   a measured 8192³ bf16 matmul, the most this machine's PyTorch gets from the chip;
4. runs one ``flwr run`` (Flower simulation, 2 synthetic sites, run config ``device = "cuda"``, each
   ClientApp worker with half the GPU) and prints its rounds.

Prints one line per result and ends with a summary; writes ``gpu_check.json``, ``cuda_tests.log`` and
``flwr_run.log`` (3 files: the device tool returns at most 8) to ``--out`` (default ``$OUT`` when set, else
``runs/gpu_check``); the federation's data and checkpoints stay in the temp folder. Exit status: 0 when
every step that ran passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RE_RUN = "CLIN_JEPA_GPU_CHECK_T0"  # the first run's start (time.time()), set in the re-run with the wheels
T0 = float(os.environ.get(RE_RUN) or time.time())

# What the GPU image ('cuda': PyTorch 2.11, Python 3.12, numpy, pandas, pyarrow, scikit-learn, matplotlib,
# pytest, ... — /work/.library/device/KINDS.md) lacks for this project, plus the few it has in versions
# Flower 1.42 may not accept (certifi, click, packaging, pathspec, protobuf, rich, typer, grpcio, ...).
# Versions are this project's virtual environment's (the development container's), read at fetch time.
CARRIED = (
    "flwr", "ray", "opacus", "dp-accounting", "dm-tree", "google-re2", "meds", "flexible-schema",
    "cryptography", "cffi", "pycparser", "pycryptodome", "iterators", "tomli", "tomli-w", "prompt-toolkit",
    "wcwidth", "grpcio", "grpcio-health-checking", "protobuf", "typer", "click", "rich", "shellingham",
    "packaging", "pathspec", "certifi", "typing-extensions", "sqlalchemy", "greenlet", "alembic", "mako",
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "anyio",
    "uvicorn", "h11", "httptools", "python-dotenv", "watchfiles", "websockets", "jsonschema",
    "jsonschema-specifications", "referencing", "rpds-py", "pytest-timeout",
    # units (issue 13) and report.html (issue 14); MLflow is not carried: the check runs with tracking off
    "ucumvert", "pint", "lark", "flexcache", "flexparser", "platformdirs", "markdown",
)
PLATFORMS = ["manylinux1_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in range(17, 40))]
# Parts of Ray a local simulation never loads; dropped so that everything carried fits the device tool's
# 64 MiB (Ray's wheel alone is 74 MB, 32 MB of it the Java worker's jar).
RAY_UNUSED = ("ray/jars/", "ray/rllib/", "ray/tune/", "ray/train/", "ray/serve/", "ray/data/", "ray/llm/",
              "ray/air/", "ray/dashboard/client/build/")
CARRY_LIMIT = 60 * 2**20


def say(*parts: object) -> None:
    print(*parts, flush=True)


# ---- wheels --------------------------------------------------------------------------------------------
def fetch_wheels(dest: Path) -> None:
    """Download the wheels of :data:`CARRIED` for CPython 3.12 on x86-64 Linux (no dependencies: the
    list is the closure the image lacks), pinned to the versions installed here, and trim Ray's."""
    from importlib.metadata import PackageNotFoundError, version

    dest.mkdir(parents=True, exist_ok=True)
    pins = []
    for name in CARRIED:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            say(f"not installed here, not carried: {name}")
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *plat, "-d", str(dest), *pins],
                   check=True)
    for wheel in dest.glob("ray-*.whl"):
        with zipfile.ZipFile(wheel) as z:
            trimmed = not any(n.startswith(RAY_UNUSED) for n in z.namelist())
        if not trimmed:
            say(f"trimming {wheel.name} (Java jar, RLlib, Tune, Train, Serve, Data, dashboard UI)")
            trim_wheel(wheel, RAY_UNUSED)
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    over = "" if total < CARRY_LIMIT else f" — over {CARRY_LIMIT / 2**20:.0f} MiB: the device tool refuses it"
    say(f"{len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {dest}{over}")


def trim_wheel(wheel: Path, drop: tuple[str, ...]) -> None:
    """Rewrite ``wheel`` without the files under ``drop`` (and their RECORD lines), in place, LZMA-compressed
    (pip reads it like any zip; Ray's native programs shrink from 33.5 to 24 MiB; minutes on 2 cores)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as out:
        for info in src.infolist():
            if info.filename.startswith(drop):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.decode().startswith(drop))
            info.compress_type = zipfile.ZIP_LZMA
            out.writestr(info, data)
    tmp.replace(wheel)


def install_wheels(wheels: Path, target: Path) -> None:
    if not sorted(wheels.glob("*.whl")):
        raise SystemExit(f"no wheels in {wheels}: `bench/gpu_check.py --fetch-wheels {wheels}` makes them")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels.glob("*.whl"))],
                   check=True)


# ---- steps ---------------------------------------------------------------------------------------------
class Budget:
    """Seconds left of ``seconds`` counted from the first run's start (the wheels' install included)."""

    def __init__(self, seconds: float) -> None:
        self.end = T0 + seconds

    def left(self) -> float:
        return self.end - time.time()


def cuda_tests(out: Path, budget: Budget) -> dict:
    env = {**os.environ, "CLIN_JEPA_REQUIRE_CUDA": "1"}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", "-p", "no:cacheprovider",
           "tests/test_cuda.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=max(30.0, budget.left() - 5))
    (out / "cuda_tests.log").write_text(proc.stdout + proc.stderr)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    skipped = "skipped" in tail
    ok = proc.returncode == 0 and not skipped
    say(f"cuda tests: {tail} ({time.perf_counter() - t0:.0f} s) -> {'PASS' if ok else 'FAIL'}")
    return {"ok": ok, "summary": tail, "seconds": time.perf_counter() - t0}


def matmul_peak() -> float:
    """bf16 FLOP/s of an 8192³ matmul (mean of 10 after 3 warm-ups): what PyTorch gets from this chip."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0)


def train_preset(name: str, batch: int, hours: int, steps: int, compile_: bool, matmul: float) -> dict:
    import itertools

    import torch

    from clin_jepa.curriculum import CurriculumConfig, FixedSchedule, phase_at
    from clin_jepa.device import compile_modules
    from clin_jepa.flops import analytic_step_flops, peak_flops
    from clin_jepa.models import ClinJEPA, preset
    from clin_jepa.models.testing import random_batch
    from clin_jepa.train import build_optimizer, train_steps

    device = torch.device("cuda")
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    model = ClinJEPA(preset(name)).to(device)
    if compile_:
        compile_modules(model.groups())
    ccfg = CurriculumConfig()
    phase = phase_at(20, 100, ccfg)  # joint: E and P train
    schedule = FixedSchedule(phase, lr=1e-4, momentum=phase.ema_momentum)
    opt = build_optimizer(model, ccfg)
    pinned = [{k: v.pin_memory() for k, v in random_batch(model.cfg, batch, hours, s).items()}
              for s in range(4)]
    batches = itertools.cycle(pinned)
    t0 = time.perf_counter()
    train_steps(model, batches, opt, schedule, 0, 3, device=device)  # compiles, warms the allocator
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, _ = train_steps(model, batches, opt, schedule, 3, steps, device=device)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    flops = analytic_step_flops(model.cfg, batch, hours, phase.trains_encoder)
    peak = peak_flops(device)
    row = {"preset": name, "batch": batch, "hours": hours, "steps": steps, "compile": compile_,
           "params_online_m": sum(p.numel() for p in model.online_parameters()) / 1e6,
           "warmup_s": warm, "step_ms": dt * 1e3, "patient_hours_per_s": batch * hours / dt,
           "gflop_per_step": flops / 1e9, "tflops": flops / dt / 1e12,
           "mfu_datasheet": flops / dt / peak if peak else None, "mfu_matmul": flops / dt / matmul,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": metrics.get("loss")}
    mfu = f"{row['mfu_datasheet']:.1%} of the {peak / 1e12:.0f} TFLOP/s datasheet peak, " if peak else ""
    say(f"{name:5s} batch {batch} x {hours} h, {steps} steps, compile={compile_}: "
        f"{row['step_ms']:.1f} ms/step, "
        f"{row['patient_hours_per_s']:,.0f} patient-h/s, {row['gflop_per_step']:.0f} GFLOP/step, "
        f"{row['tflops']:.0f} TFLOP/s = {mfu}{row['mfu_matmul']:.1%} of the measured matmul "
        f"({matmul / 1e12:.0f} TFLOP/s); warm-up {warm:.0f} s, peak memory {row['peak_mem_gib']:.1f} GiB")
    del model, opt
    torch.cuda.empty_cache()
    return row


def flower_on_cuda(out: Path, budget: Budget, device: str = "cuda") -> dict:
    import yaml

    from clin_jepa.localrun import LocalFlower

    work = Path(tempfile.gettempdir()) / "clin-jepa-gpu-check-flower"  # data and checkpoints: not in --out
    shutil.rmtree(work, ignore_errors=True)
    sites_dir = work / "sites"
    subprocess.run([sys.executable, "-m", "clin_jepa.cli", "synth", "--out", str(sites_dir), "--sites", "2",
                    "--patients", "200", "--seed", "0"], cwd=ROOT, check=True, capture_output=True)
    sites = sorted(sites_dir.glob("*.yaml"))
    for path in sites:  # these sites may train on either device (limits.devices), so device = cuda is allowed
        raw = yaml.safe_load(path.read_text())
        raw.setdefault("training", {})["device"] = "auto"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    ckpt, rounds = work / "ckpt", 3
    config = {"preset": "small", "num-rounds": rounds, "local-steps": 10, "batch-size": 64, "hours": 72,
              "device": device, "site-configs": ",".join(map(str, sites)), "checkpoint-dir": str(ckpt),
              "synth-if-missing": False, "min-sites": 2, "round-timeout": 300.0,
              "tracking-uri": "off", "eval-every": -1}  # training rounds only: one metrics line each
    t0 = time.perf_counter()
    with LocalFlower(work / "flwr_home", ROOT, work / "superlink.log") as fl:
        gpus = {"client-resources-num-gpus": 0.5} if device == "cuda" else {}
        proc = fl.run(ROOT, config, num_supernodes=2, timeout=max(60.0, budget.left() - 10),
                      federation={**gpus, "init-args-log-to-driver": False})
    wall = time.perf_counter() - t0
    (out / "flwr_run.log").write_text(proc.stdout)
    lines = ([json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines() if x.strip()]
             if (ckpt / "metrics.jsonl").exists() else [])
    ok = proc.returncode == 0 and len(lines) == rounds + 1 and all(ln.get("updated") for ln in lines[1:])
    for ln in lines[1:]:
        say(f"  round {ln['round']} ({ln['phase']}): loss {ln['aggregate'].get('loss', float('nan')):.4f}, "
            f"{ln['accepted']} sites, {ln['round_time_s']:.1f} s")
    say(f"flwr run, 2 sites, device={device}, small preset, {rounds} rounds x 10 steps: {wall:.0f} s, "
        f"exit {proc.returncode} -> {'PASS' if ok else 'FAIL (see flwr_run.log)'}")
    return {"ok": ok, "wall_s": wall, "rounds": [{k: ln.get(k) for k in ("round", "phase", "round_time_s")}
                                                  for ln in lines[1:]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch-wheels", type=Path, metavar="DIR", help="download the wheels to carry; exit")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels (default: .whl)")
    ap.add_argument("--site-dir", type=Path, default=Path("/tmp/clin-jepa-gpu-site"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_check"))
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting steps after this long")
    ap.add_argument("--steps", type=int, default=200, help="timed training steps per preset")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hours", type=int, default=72)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "train", "flower"])
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="no GPU needed: only the Flower step, with device = cpu (checks the plumbing here)")
    args = ap.parse_args()
    if args.fetch_wheels:
        fetch_wheels(args.fetch_wheels)
        return 0
    if args.dry_run_cpu:
        args.out.mkdir(parents=True, exist_ok=True)
        return 0 if flower_on_cuda(args.out, Budget(args.budget_s), device="cpu")["ok"] else 1
    import torch

    if not torch.cuda.is_available():
        say(f"no CUDA: skipped (torch {torch.__version__} sees no CUDA device; nothing was installed or run)")
        return 0
    if os.environ.get(RE_RUN) is None and args.wheels.is_dir():
        t0 = time.perf_counter()
        install_wheels(args.wheels, args.site_dir)
        say(f"installed {len(list(args.wheels.glob('*.whl')))} wheels into {args.site_dir} "
            f"({time.perf_counter() - t0:.0f} s)")
        env = {**os.environ, RE_RUN: repr(T0), "CLIN_JEPA_FLOWER_BIN": str(args.site_dir / "bin"),
               "PYTHONPATH": os.pathsep.join([str(args.site_dir), str(ROOT),
                                              os.environ.get("PYTHONPATH", "")]),
               "PATH": f"{args.site_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        return subprocess.run([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                              env=env).returncode
    sys.path.insert(0, str(ROOT))
    budget = Budget(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    name = torch.cuda.get_device_name(0)
    say(f"GPU: {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"Python {sys.version.split()[0]}")
    report: dict = {"gpu": name, "torch": torch.__version__, "steps": {}}
    ok = True
    plan = [("tests", 120.0), ("train", 200.0), ("flower", 120.0)]
    for step, need in plan:
        if step in args.skip:
            continue
        if budget.left() < need:
            say(f"{step}: skipped, {budget.left():.0f} s left of --budget-s (needs ~{need:.0f} s)")
            report["steps"][step] = {"ok": None, "skipped": "budget"}
            continue
        try:
            if step == "tests":
                result = cuda_tests(args.out, budget)
            elif step == "train":
                matmul = matmul_peak()
                rows = [train_preset(p, args.batch, args.hours, args.steps, not args.no_compile, matmul)
                        for p in ("small", "base")]
                result = {"ok": True, "matmul_tflops": matmul / 1e12, "presets": rows}
            else:
                result = flower_on_cuda(args.out, budget)
        except Exception as exc:  # one failed step must not hide the others
            say(f"{step}: FAIL {type(exc).__name__}: {exc}")
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        report["steps"][step] = result
        ok = ok and result.get("ok") is not False
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    verdict = {True: "PASS", None: "skipped", False: "FAIL"}
    say("summary: " + ", ".join(f"{k} {verdict[v.get('ok')]}" for k, v in report["steps"].items())
        + f"; report {args.out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
