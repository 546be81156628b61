"""``clin-jepa certs``: make the federation's CA, SuperLink certificate, node keys and signing key."""

from __future__ import annotations

import argparse

from clin_jepa.security.certs import PRIVATE_MODE, default_node_names, generate_pki

HELP = "create the CA, SuperLink TLS certificate, one key pair per hospital node and the signing key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write into (created if missing)")
    parser.add_argument("--host", action="append", default=[], required=True,
                        help="DNS name or IP the hospitals use to reach the SuperLink (repeatable); "
                             "localhost, 127.0.0.1 and ::1 are always added")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--nodes", type=int, help="number of hospital nodes: keys node-1 … node-N")
    group.add_argument("--node", action="append", metavar="NAME",
                       help="name a hospital node instead of numbering them (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace existing keys (old ones stop working)")


def run(args: argparse.Namespace) -> int:
    names = list(args.node) if args.node else default_node_names(args.nodes)
    written = generate_pki(args.out, args.host, names, force=args.force)
    print(f"wrote {len(written)} files under {args.out}:")
    for path in written:
        secret = (path.stat().st_mode & 0o777) == PRIVATE_MODE
        print(f"  {'[private 0600] ' if secret else '               '}{path}")
    print("Give each hospital its nodes/<name>/ folder only; keep ca.key and coordinator/signing.key "
          "offline or on the coordinator. Register each nodes/<name>/node.pub with "
          "`flwr supernode register` (see deploy/README.md).")
    return 0
