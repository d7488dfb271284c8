"""Small launch.py subcommands that only read configuration and data."""
from __future__ import annotations

import argparse

from orchestration.config_loader import dump_config, load_config


def show_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(dump_config(cfg), end="")
    return 0


def list_datasets(args: argparse.Namespace) -> int:
    from orchestration.data import describe_datasets

    cfg = load_config(args.config, args.overrides)
    print(describe_datasets(cfg.data))
    return 0
