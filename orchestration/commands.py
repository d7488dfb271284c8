"""Small launch.py subcommands that only read configuration and data."""
from __future__ import annotations

import argparse

from orchestration.config_loader import dump_config, load_config
from orchestration.errors import UserInputError


def show_config(args: argparse.Namespace) -> int:
    if getattr(args, "markdown", False):
        if args.config or args.overrides:
            raise UserInputError("show-config --markdown: prints the reference of every command's keys and "
                                 "takes no --config, --address or key=value; drop them")
        from orchestration.config_reference import reference

        print(reference(), end="")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(dump_config(cfg), end="")
    return 0


def list_datasets(args: argparse.Namespace) -> int:
    from orchestration.data import describe_datasets

    cfg = load_config(args.config, args.overrides)
    print(describe_datasets(cfg.data))
    return 0
