#!/usr/bin/env python3
"""Coordinator: add a SuperLink connection so that `flwr run . NAME` reaches the SuperLink.

    deploy/coordinator/add-federation.py NAME --address HOST:PORT --ca CERTS/ca.crt [--default]
    deploy/coordinator/add-federation.py NAME --address 127.0.0.1:PORT --insecure

Flower 1.42 keeps SuperLink connections in $FLWR_HOME/config.toml (default ~/.flwr), not in the
app's pyproject.toml; this writes the `[superlink.NAME]` entry with Flower's own config writer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flwr.cli.flower_config import (
    init_flwr_config,
    set_default_superlink_connection,
    write_superlink_connection,
)
from flwr.cli.typing import SuperLinkConnection
from flwr.supercore.utils import get_flwr_home

WARNING = """\
################################################################################
##  WARNING: INSECURE connection '{name}': no TLS. Anything sent to the SuperLink,
##  including the app you run, travels in clear text. Local testing only.
################################################################################"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("name", help="connection name used as `flwr run . NAME`")
    parser.add_argument("--address", required=True, help="SuperLink HOST:PORT (HOST as in its certificate)")
    parser.add_argument("--ca", help="CA certificate (ca.crt from `clin-jepa certs`)")
    parser.add_argument("--insecure", action="store_true", help="no TLS (local testing only)")
    parser.add_argument("--default", action="store_true", help="make it the default connection")
    args = parser.parse_args(argv)
    if args.insecure == bool(args.ca):
        parser.error("give exactly one of --ca FILE (TLS) or --insecure")
    if args.ca and not Path(args.ca).is_file():
        parser.error(f"--ca {args.ca}: no such file")
    if args.insecure:
        print(WARNING.format(name=args.name), file=sys.stderr)
    init_flwr_config()
    write_superlink_connection(SuperLinkConnection(
        name=args.name,
        address=args.address,
        root_certificates=str(Path(args.ca).resolve()) if args.ca else None,
        insecure=True if args.insecure else None,
    ))
    if args.default:
        set_default_superlink_connection(args.name)
    print(f"added SuperLink connection '{args.name}' -> {args.address} in {get_flwr_home() / 'config.toml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
