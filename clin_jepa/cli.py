"""The ``clin-jepa`` console command.

Each subcommand lives in ``clin_jepa/commands/<name>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their subcommand runs,
so ``clin-jepa --help`` stays fast and a broken optional dependency cannot break unrelated commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clin_jepa.errors import ClinJepaError

SUBCOMMANDS = ("synth", "validate", "labels", "train", "evaluate", "certs", "sign")


def _load(name: str):  # noqa: ANN202 - returns a module
    return importlib.import_module(f"clin_jepa.commands.{name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clin-jepa", description="Federated Clin-JEPA toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name in SUBCOMMANDS:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name == f"clin_jepa.commands.{name}":
                continue  # subcommand not built yet
            raise
        if wanted not in (None, name):
            sub.add_parser(name, help=module.HELP)
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    from clin_jepa.data.concepts import restored_catalog  # light: the catalog itself loads on first use

    try:
        with restored_catalog():  # a command's --concepts must not outlive it (main() is also a library call)
            return int(args._run(args) or 0)
    except ClinJepaError as exc:
        print(f"clin-jepa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clin-jepa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
