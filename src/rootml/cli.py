"""The `rootml` command: one subcommand per job. Only this module parses command lines.

Each job adds its parser in an `_add_<job>` function that sets `func`; `main` runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rootml.errors import RootmlError


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list trees/ntuples, entries and branches of ROOT files")
    p.add_argument("files", nargs="+", help="paths or URLs (root://, https://)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from rootml.datasets.inspect import format_report, inspect_file

    reports = [inspect_file(f) for f in args.files]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0


_JOBS = [_add_inspect]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rootml", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _JOBS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except RootmlError as err:
        print(f"rootml {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
