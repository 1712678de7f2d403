"""`fair-trl` command line: `fair-trl demo`, `fair-trl tiny-model OUT_DIR --kind {text,vlm}`."""

from __future__ import annotations

import argparse
import sys

from fair_trl.config import ADVANTAGE_ESTIMATORS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fair-trl", description="FairGRPO for clinical VLMs, on TRL.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the embedded default job (tiny VLM, generated rows, CPU)")
    demo.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    demo.add_argument("--estimator", choices=ADVANTAGE_ESTIMATORS, default="fair_grpo")
    demo.add_argument("--output-dir", default=None, help="keep the trainer's output here (default: a temp dir)")
    demo.add_argument("--seed", type=int, default=0)

    tiny = commands.add_parser("tiny-model", help="save a tiny offline model with its tokenizer/processor")
    tiny.add_argument("out_dir")
    tiny.add_argument("--kind", choices=("text", "vlm"), default="text")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from fair_trl.demo import main as demo_main

        demo_main(args.steps, args.estimator, args.output_dir, args.seed)
    elif args.command == "tiny-model":
        from fair_trl.models import save_tiny_model

        path = save_tiny_model(args.out_dir, kind=args.kind, seed=args.seed)
        print(f"saved tiny {args.kind} model to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
