#!/usr/bin/env python
"""SimulRL command line.

Every subcommand parses and validates its config before torch, vLLM, Ray or DeepSpeed are
imported, so bad input fails fast with exit status 2 and a message naming the key or file.
"""
from __future__ import annotations

import argparse
import importlib
import sys


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/); defaults apply without one")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. run.dir=runs/x rollout.episode.chunk_size=4")
    p.add_argument("--address", metavar="ADDR",
                   help="join this Ray cluster (same as ray.address=ADDR; default $RAY_ADDRESS, else local)")


def build_parser(prog: str = "launch.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="SimulRL: RL training and evaluation for simultaneous machine translation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="SeqPO-SiMT training: rollouts, rewards, GRPO updates, weight sync")
    _config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop (with a checkpoint) after step N")
    p.set_defaults(handler="orchestration.training.loop:main")

    p = sub.add_parser("pipeline", help="the main job: SFT warm start, GRPO from it, then the dev scoreboard "
                                        "against the wait-k curve; resumable by stage")
    _config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the pipeline in RUN_DIR: finished stages are kept")
    p.set_defaults(handler="orchestration.training.pipeline:main")

    p = sub.add_parser("sweep", help="a grid of training runs (e.g. reward ablations), resumable run by run, "
                                     "with one table and one quality-latency plot")
    p.add_argument("--config", required=True, metavar="FILE", help="sweep YAML (see configs/sweeps/)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/sweeps/<file name>)")
    p.add_argument("--runs", metavar="NAME,...", help="only these runs of the sweep (comma-separated names), "
                                                      "in the file's order")
    p.set_defaults(handler="orchestration.training.sweep:main")

    p = sub.add_parser("sft", help="SFT warm start on interleaved episodes built from parallel pairs")
    _config_args(p)
    p.set_defaults(handler="orchestration.training.sft:main")

    p = sub.add_parser("eval", help="evaluate wait-k, LSG, learned and offline policies on a test set: "
                                    "instances, scores, quality-latency curves")
    _config_args(p)
    p.set_defaults(handler="orchestration.eval.command:main")

    p = sub.add_parser("show-config", help="print the resolved config (YAML) and exit; --markdown: the "
                                           "configuration reference of every command (docs/configuration.md)")
    _config_args(p)
    p.add_argument("--markdown", action="store_true",
                   help="print the reference of every key (type, bounds, default, description) and the rules "
                        "between keys as Markdown, instead of one resolved config")
    p.set_defaults(handler="orchestration.commands:show_config")

    p = sub.add_parser("datasets", help="list the named data sets and whether their files are present")
    _config_args(p)
    p.set_defaults(handler="orchestration.commands:list_datasets")

    p = sub.add_parser("score", help="score SimulEval-style instances (latency, BLEU, chrF) as one JSON object")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--instances", metavar="FILE", help="JSON lines: source_length, delays, prediction[, reference]")
    what.add_argument("--curve", metavar="DIR",
                      help="an eval run directory: every setting's distance to its wait-k curve (DIR/scoreboard.json)")
    p.add_argument("--latency-unit", choices=["word", "char"], default="word",
                   help="unit of delays and lengths: word (whitespace) or char (Chinese)")
    p.add_argument("--per-instance", action="store_true", help="add per-instance latency scores")
    p.add_argument("--against", metavar="BASE", default=None,
                   help="instances of the same sentences to compare with: paired 95%% intervals of the differences")
    p.add_argument("--replicates", type=int, default=1000, metavar="N",
                   help="--curve: bootstrap resamples of the sentences (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="--curve: seed of the resamples (default 0)")
    p.set_defaults(handler="orchestration.eval.curve_run:score_command")

    p = sub.add_parser("bench", help="measure speed or metric quality; writes DIR/bench_<kind>.json")
    p.add_argument("kind", choices=sorted(BENCHMARKS), help="what to measure")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the JSON result")
    p.add_argument("--sizes", metavar="WxR,...", help="bench scaling: rollout workers x learner ranks to run, "
                                                     "e.g. 1x1,2x2 (the default)")
    _config_args(p)
    return parser


# benchmark kind -> handler; each writes DIR/bench_<kind>.json with ratios against a baseline
BENCHMARKS = {
    "rollout": "orchestration.bench.rollout:main",
    "reward": "orchestration.bench.reward:main",
    "metrics": "orchestration.bench.metrics:main",
    "sft": "orchestration.bench.sft:main",
    "train": "orchestration.bench.train:main",
    "scaling": "orchestration.bench.scaling:main",
    "sync": "orchestration.bench.sync:main",
}


def main(argv: list[str] | None = None, prog: str = "launch.py") -> int:
    """Run one command (``argv``: the arguments after the program name, default ``sys.argv[1:]``);
    returns the exit status: 0, 1 for a failed run, 2 for bad input."""
    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options given after them (bench KIND --out D k=v)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    if getattr(args, "address", None):
        args.overrides = list(args.overrides or []) + [f"ray.address={args.address}"]
    handler = BENCHMARKS[args.kind] if args.command == "bench" else args.handler
    module_name, func_name = handler.split(":")
    from orchestration.errors import UserInputError

    try:
        return int(getattr(importlib.import_module(module_name), func_name)(args) or 0)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # output piped into `head` and friends: stop quietly, as Unix tools do
        sys.stderr.close()
        return 0


def cli() -> int:
    """The ``simulrl`` console command (``[project.scripts]``): ``launch.py`` under that name."""
    return main(prog="simulrl")


if __name__ == "__main__":
    sys.exit(main())
