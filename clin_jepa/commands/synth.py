"""``clin-jepa synth``: write synthetic multi-hospital ICU data in MEDS format, with site configs."""

from __future__ import annotations

import argparse
import time

MAX_PATIENTS = 1_000_000
HELP = "Generate synthetic ICU hospitals as MEDS datasets plus matching site config YAMLs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder; gets DIR/<site>/ (MEDS: data/<split>/<k>.parquet, metadata/) "
                             "and DIR/<site>.yaml (site config, paths relative to the YAML)")
    parser.add_argument("--sites", type=int, default=3, metavar="N",
                        help="number of hospitals, 1-26 (default 3: hospital_a, hospital_b, hospital_c as in "
                             "site_configs/; more sites are variants of these with rotated case mixes)")
    parser.add_argument("--patients", type=int, default=600, metavar="P",
                        help="subjects per hospital, >= 10 (default 600); about 8%% of survivors get a "
                             "second ICU stay")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed, >= 0 (default 0); the same arguments give byte-identical files")
    parser.add_argument("--subjects-per-shard", type=int, default=128, metavar="K",
                        help="subjects per parquet shard within each split (default 128)")
    parser.add_argument("--check", action="store_true",
                        help="afterwards read each site back and print per task its positive rate and the "
                             "held-out AUROC of a last-observed-value logistic regression")
    parser.add_argument("--code-style", choices=("native", "mimic-iv-meds", "eicu-meds"), default="native",
                        help="write each hospital in its own codes and units (native, default) or recode it "
                             "as the MIMIC-IV-MEDS / eICU-MEDS ETL writes it, with the shipped "
                             "site_configs/examples/ config as its YAML")
    parser.add_argument("--extra-concepts", action="store_true",
                        help="also chart the catalog's diastolic BP, GCS total, FiO2, urine output, "
                             "bilirubin, INR, albumin and pH, driven by the same hidden physiology (native "
                             "codes only; without it the output is what it was before the option existed)")
    parser.add_argument("--force", action="store_true",
                        help="allow a non-empty DIR and replace the hospitals and YAMLs this command writes")


def run(args: argparse.Namespace) -> int:
    from clin_jepa.data.synth import synthesize
    from clin_jepa.errors import ConfigError

    if not 10 <= args.patients <= MAX_PATIENTS:  # checked here too: the simulator allocates per patient
        raise ConfigError(f"--patients: must be between 10 and {MAX_PATIENTS:,} per site, "
                          f"got {args.patients}")
    if args.extra_concepts and args.code_style != "native":
        raise ConfigError("--extra-concepts: only with --code-style native (the shipped MIMIC-IV-MEDS and "
                          "eICU-MEDS configs map the 16 core measurements)")
    start = time.perf_counter()
    outputs = synthesize(args.out, args.sites, args.patients, args.seed, args.force, args.subjects_per_shard,
                         args.extra_concepts)
    if args.code_style != "native":
        from clin_jepa.data.synth.code_styles import recode_site

        for o in outputs:
            recode_site(o.root, o.config, args.code_style)
    for o in outputs:
        c = o.counts
        print(f"{o.site}: {c['subjects']} subjects, {c['stays']} ICU stays, {c['events']} events in "
              f"{c['shards']} shards, {c['deaths']} deaths -> {o.root} (config {o.config})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    if args.check:
        from clin_jepa.config import load_site_config
        from clin_jepa.data.synth.check import task_report

        for o in outputs:
            print(f"{o.site}: tasks (eligible stays with a defined label)")
            for row in task_report(load_site_config(o.config)):
                print(f"  {row.format()}")
    return 0
