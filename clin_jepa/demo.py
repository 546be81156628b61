"""``make demo``: synthesize three hospitals (if absent), train them federatedly with Flower, evaluate.

Steps, each printed as it runs:
1. ``clin-jepa synth --out data/synthetic --sites 3`` unless the site configs' data already exists;
2. ``flwr run . --stream`` as a simulation of one SuperNode per site config, on a private local SuperLink
   (``clin_jepa.localrun``) that is stopped afterwards; the app's run config comes from pyproject.toml;
3. ``clin-jepa evaluate runs/federated/ckpt.pt runs/federated/round_0000.pt --sites ... --out
   runs/federated/report``: the federated model beside its untrained control (the global model the server
   started from, same seed and bins), so the report says what training bought, paired.

Extra arguments are passed to ``flwr run --run-config`` (e.g. ``python -m clin_jepa.demo num-rounds=4``).
"""

from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path

from clin_jepa.checkpoint import load_checkpoint
from clin_jepa.cli import main as cli
from clin_jepa.config import load_site_config
from clin_jepa.errors import ClinJepaError
from clin_jepa.federation import FederationConfig
from clin_jepa.localrun import LocalFlower

ROOT = Path(__file__).resolve().parents[1]


def _overrides(args: list[str]) -> dict[str, object]:
    parsed = tomllib.loads("\n".join(args))
    return dict(parsed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    run_config = {**pyproject["tool"]["flwr"]["app"]["config"], **_overrides(argv)}
    try:
        cfg = FederationConfig.from_run_config(run_config)
        sites = [cfg.resolve(p, ROOT) for p in cfg.site_configs]
        missing = [s for s in sites if not load_site_config(s).data_path.exists()]
        if missing:
            out = load_site_config(missing[0]).data_path.parent
            print(f"[demo] 1/3 generating {len(sites)} synthetic hospitals in {out}", flush=True)
            if cli(["synth", "--out", str(out), "--sites", str(len(sites))]) != 0:
                return 2
        else:
            print("[demo] 1/3 site data present", flush=True)
        print(f"[demo] 2/3 federated training: {len(sites)} simulated hospitals, {cfg.num_rounds} rounds x "
              f"{cfg.local_steps} local steps, preset {cfg.preset}", flush=True)
        ckpt_dir = cfg.resolve(cfg.checkpoint_dir, ROOT)
        with LocalFlower(ROOT / "runs" / "flower_home", ROOT, ckpt_dir / "superlink.log") as flower:
            result = flower.run(ROOT, _overrides(argv), num_supernodes=len(sites), timeout=3600, echo=True)
        ckpt_path = ckpt_dir / "ckpt.pt"
        if not ckpt_path.exists() or load_checkpoint(ckpt_path).round != cfg.num_rounds:
            print(f"[demo] federated run did not finish (flwr exit {result.returncode}); see the log above",
                  file=sys.stderr)
            return 1
        t_fl = time.perf_counter() - t0
        print(f"[demo] federated checkpoint: {ckpt_path} ({t_fl:.0f} s so far)", flush=True)
        report = ckpt_dir / "report"
        print(f"[demo] 3/3 evaluating on the sites' held-out stays -> {report}", flush=True)
        untrained = ckpt_dir / "round_0000.pt"
        code = cli(["evaluate", str(ckpt_path), str(untrained), "--sites", *map(str, sites), "--out",
                    str(report), "--labels", f"federated={ckpt_path}", f"untrained={untrained}", "--quiet"])
    except ClinJepaError as exc:
        print(f"[demo] error: {exc}", file=sys.stderr)
        return 2
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
