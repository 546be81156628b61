"""``clin-jepa sign``: sign a checkpoint with the coordinator key, or verify its signature."""

from __future__ import annotations

import argparse

from clin_jepa.security.signing import sign_file, verify_file

HELP = "sign a checkpoint with the coordinator key (writes CKPT.sig), or --verify it with the public key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="+", help="checkpoint file(s)")
    parser.add_argument("--key", required=True,
                        help="coordinator/signing.key to sign; coordinator/signing.pub with --verify")
    parser.add_argument("--verify", action="store_true", help="check CKPT.sig instead of writing it")


def run(args: argparse.Namespace) -> int:
    for ckpt in args.checkpoint:
        if args.verify:
            verify_file(ckpt, args.key)
            print(f"OK  {ckpt}: signature valid")
        else:
            print(f"signed {ckpt} -> {sign_file(ckpt, args.key)}")
    return 0
