"""`bridge init`: generate a federation for a real deployment (see deploy/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "init", help="generate keys, identities and configs for a real deployment"
    )
    parser.add_argument(
        "--spec", required=True, type=Path, metavar="FILE", help="the federation's description"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="a new directory to write into"
    )
    parser.add_argument(
        "--nats-ca",
        type=Path,
        metavar="PEM",
        help="the CA of the NATS nodes' certificates, copied to every client",
    )
    parser.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    from ..deploy import init_deployment, load_spec

    result = init_deployment(load_spec(args.spec), args.out, nats_ca=args.nats_ca)
    root = result.root
    print(f"deployment written to {root}")
    print("  operator/   trust anchor (keep anchor.key offline), NATS admin seed")
    print(f"  nats/       {len(result.nats_configs)} node configs; add TLS files (nats/tls/README)")
    print(f"  broker/     {result.broker_config.name}, its seed and audit key")
    print("  ops/        the ops identity's seed")
    for path in result.adapter_configs:
        print(f"  agencies/{path.parent.name}/  hand this directory to the agency")
    print("next: deploy/README.md, from 'Certificates' on")
    return 0
