"""`fair-trl` command line: demo, evaluate, inspect, audit, compare, build-dataset, tiny-model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fair-trl", description="FairGRPO for clinical VLMs, on TRL.")
    commands = parser.add_subparsers(dest="command", required=True)

    # Its options are `ExperimentSettings` and `DemoOptions` fields, parsed by `fair_trl.demo.command`;
    # `fair-trl demo --help` lists them.
    commands.add_parser(
        "demo",
        add_help=False,
        help="GRPO vs FairGRPO (+ positive control) on the synthetic benchmark, warm-started; writes outputs/demo/",
    )

    evaluate = commands.add_parser(
        "evaluate", help="fairness tables (Table 2 and appendix style) for a predictions jsonl file"
    )
    evaluate.add_argument("predictions", help="jsonl: prediction, reference, dataset and demographics per line")
    evaluate.add_argument(
        "--attributes", nargs="+", default=["age", "sex"], help="demographic fields (default: age sex)"
    )
    evaluate.add_argument("--json", dest="json_out", default=None, help="write compute_fairness output per attribute")
    evaluate.add_argument("--markdown", dest="markdown_out", default=None, help="write the tables as markdown")
    evaluate.add_argument("--skip-invalid", action="store_true", help="skip and count malformed lines")
    evaluate.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals (JSON)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--age-bins",
        type=float,
        nargs="+",
        default=None,
        metavar="BOUND",
        help="upper bounds of the age bins a1, a2, ..., as in training's age_bins (default: 25 50 75)",
    )
    evaluate.add_argument("--max-age", type=float, default=None, help="ages above this are invalid (default 120)")

    _add_inspect_parser(commands)
    _add_audit_parsers(commands)

    build = commands.add_parser(
        "build-dataset", help="build a clinical dataset in the project's schema and save it with save_to_disk"
    )
    build.add_argument("name", help="chexpert, ham10000, isic2020, pad_ufes20, vindr_mammo, hemorrhage, "
                       "covid_blues, climb_jsonl or synthetic")  # fmt: skip
    build.add_argument("data_dir", help="the release's folder (climb_jsonl: a .jsonl file or folder; synthetic: -)")
    build.add_argument("out_dir", help="where to save the DatasetDict (train/test) and build_summary.json")
    build.add_argument("--test-size", type=float, default=0.2, help="fraction of patients in test (default 0.2)")
    build.add_argument("--seed", type=int, default=0, help="seed of the patient split (and synthetic data)")
    build.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder option, repeatable; values are read as YAML (e.g. -o uncertain=positive -o num_rows=10000)",
    )

    tiny = commands.add_parser("tiny-model", help="save a tiny offline model with its tokenizer/processor")
    tiny.add_argument("out_dir")
    tiny.add_argument("--kind", choices=("text", "vlm"), default="text")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--vllm-compatible", action="store_true", help="attention heads vLLM's CPU backend accepts (size 32)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from fair_trl.demo.command import main as demo_main

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "evaluate":
        return _evaluate(args)
    elif args.command == "inspect":
        return _inspect(args)
    elif args.command == "audit":
        return _audit(parser, args)
    elif args.command == "compare":
        return _compare(args)
    elif args.command == "build-dataset":
        return _build_dataset(parser, args)
    elif args.command == "tiny-model":
        from fair_trl.models import save_tiny_model

        path = save_tiny_model(args.out_dir, kind=args.kind, seed=args.seed, vllm_compatible=args.vllm_compatible)
        print(f"saved tiny {args.kind} model to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fair_trl.evaluate import evaluate_file, markdown_report, text_report, to_json
    from fair_trl.groups import DEFAULT_AGE_BINS, DEFAULT_MAX_AGE

    age_bins = DEFAULT_AGE_BINS if args.age_bins is None else args.age_bins
    max_age = DEFAULT_MAX_AGE if args.max_age is None else args.max_age
    outputs = {"--json": args.json_out, "--markdown": args.markdown_out}
    try:
        check_outputs(outputs, {"the predictions file": args.predictions})
        report = evaluate_file(
            args.predictions, args.attributes, args.skip_invalid, args.bootstrap, args.seed, age_bins, max_age
        )
    except (OSError, ValueError) as err:
        print(f"fair-trl evaluate: {err}", file=sys.stderr)
        return 2
    print(text_report(report), end="")
    try:
        for path, text in ((args.json_out, to_json), (args.markdown_out, markdown_report)):
            if path:
                write_text(Path(path), text(report))
    except OSError as err:
        print(f"fair-trl evaluate: {err}", file=sys.stderr)
        return 2
    return 0


def check_outputs(outputs: dict[str, str | None], inputs: dict[str, str]) -> None:
    """Refuse an output path that is an input, or that two outputs share (`outputs`: option -> path or None)."""
    from pathlib import Path

    seen: dict[Path, str] = {Path(p).resolve(): name for name, p in inputs.items()}
    for option, path in outputs.items():
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ValueError(f"{option} {path} is also {seen[resolved]}: it would be overwritten; choose another path")
        seen[resolved] = option


def write_text(path: Any, text: str) -> None:
    """Write whole or not at all, creating the missing folders on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _add_inspect_parser(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="the groups FairGRPO will form in a dataset, per domain, with warnings, before training",
        description="Read a dataset with the column settings of training (flags, or --config recipe.yaml's "
        "FairGRPOConfig fields; flags win) and print per domain: rows, label set and the groups FairGRPO will "
        "form with their counts and the share unknown; warn about small groups, values that did not parse, "
        "category columns with many values and labels outside the label set.",
    )
    inspect.add_argument("dataset", help="a folder written by save_to_disk, a .jsonl/.csv/.parquet file, or a Hub id")
    inspect.add_argument("--split", default="train", help="split of a dataset folder or Hub id (default: train)")
    inspect.add_argument("--config", default=None, metavar="RECIPE.yaml",
                         help="read domain_column, demographic_columns, age_bins, max_age, solution_column and "
                         "label_sets from this recipe")  # fmt: skip
    inspect.add_argument("--domain-column", default=None,
                         help="column naming each row's domain (default: dataset, when the data has it)")  # fmt: skip
    inspect.add_argument("--no-domain-column", action="store_true", help="every row in one domain")
    inspect.add_argument("--demographic-columns", nargs="*", default=None, metavar="COLUMN[:KIND]",
                         help="demographic columns, kind age, sex or category (default: sex age, those the data "
                         "has); none given: no groups")  # fmt: skip
    inspect.add_argument("--label-sets", default=None, metavar="JSON|FILE",
                         help="declared label sets {domain: [label, ...]}, as JSON or a .json/.yaml file")  # fmt: skip
    inspect.add_argument("--solution-column", default=None, help="column of reference labels (default: solution)")
    inspect.add_argument("--age-bins", type=float, nargs="+", default=None, metavar="BOUND",
                         help="upper bounds of the age bins a1, a2, ... (default: 25 50 75)")  # fmt: skip
    inspect.add_argument("--max-age", type=float, default=None, help="ages above this are invalid (default 120)")
    inspect.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON to this file")


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    import datasets
    import yaml

    from fair_trl.data.loading import load_split
    from fair_trl.inspection import ColumnSettings, format_inspection, inspect_dataset

    try:
        recipe: dict[str, Any] = {}
        if args.config:
            recipe = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
            if not isinstance(recipe, dict):
                raise ValueError(f"{args.config}: expected a YAML mapping of config fields")
        settings = ColumnSettings.from_config(
            recipe,
            domain_column=args.domain_column,
            demographic_columns=args.demographic_columns,
            label_sets=args.label_sets,
            solution_column=args.solution_column,
            age_bins=args.age_bins,
            max_age=args.max_age,
        )
        if args.no_domain_column:
            settings.domain_column = None
        datasets.disable_progress_bars()
        dataset = load_split(args.dataset, args.split)
        report = inspect_dataset(dataset, settings, dataset_name=str(args.dataset))
        if args.json_out:
            _write_text(args.json_out, json.dumps(report, indent=2) + "\n")
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"fair-trl inspect: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # datasets' own errors (a Hub id offline, a malformed file) are user input too
        if type(err).__module__.split(".")[0] not in ("datasets", "huggingface_hub", "pyarrow"):
            raise
        print(f"fair-trl inspect: {args.dataset}: {_one_line(err)}", file=sys.stderr)
        return 2
    print(format_inspection(report), end="")
    if args.json_out:
        print(f"wrote {args.json_out}")
    return 0


def _write_text(path: str, text: str) -> None:
    from pathlib import Path

    target = Path(path)
    if not target.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {str(target.parent)!r} does not exist")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _add_grouping_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--attributes", nargs="+", default=["age", "sex"], help="demographic columns (default: age sex)"
    )
    command.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals")
    command.add_argument("--seed", type=int, default=0, help="seed of the resamples (and of sampled generation)")
    command.add_argument("--age-bins", type=float, nargs="+", default=None, metavar="BOUND",
                         help="upper bounds of the age bins a1, a2, ... (default: 25 50 75)")  # fmt: skip
    command.add_argument("--max-age", type=float, default=None, help="ages above this are invalid (default 120)")
    command.add_argument("--no-plots", action="store_true", help="write the tables only")


def _add_audit_parsers(commands: Any) -> None:
    from fair_trl.audit.backends import BACKENDS

    audit = commands.add_parser(
        "audit",
        help="answer a dataset split with a model (resumable), then write the fairness report and plots",
        description="Answer every row of a split with the dataset's prompt, greedily by default, into "
        "OUT/predictions.jsonl (a rerun resumes), then write OUT/report.md, OUT/fairness.json and the plots.",
    )
    audit.add_argument("--model", required=True, help="local path or Hub id (image-text-to-text or causal LM)")
    audit.add_argument("--dataset", required=True,
                       help="'synthetic', a folder written by fair-trl build-dataset, or a Hub dataset")  # fmt: skip
    audit.add_argument("--split", default="test", help="split to answer (default: test)")
    audit.add_argument("--backend", choices=BACKENDS, default="hf", help="generation engine (default: hf)")
    audit.add_argument("-o", "--output-dir", required=True, help="where predictions, report and plots go")
    audit.add_argument("--max-new-tokens", type=int, default=256, help="generation length cap (default 256)")
    audit.add_argument("--batch-size", type=int, default=8, help="rows per generation batch (default 8)")
    audit.add_argument("--limit", type=int, default=None, help="answer only the first N rows of the split")
    audit.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; > 0 samples")
    audit.add_argument(
        "--dataset-option", "-O", action="append", default=[], metavar="KEY=VALUE",
        help="build option of --dataset synthetic, repeatable, read as YAML (e.g. -O num_rows=512 -O seed=42)",
    )  # fmt: skip
    audit.add_argument("--id-column", default=None, help="column of unique row ids (default: the row's index)")
    audit.add_argument("--chat-template", default=None, metavar="FILE",
                       help="Jinja chat template for a processor that has none (or to replace its own)")  # fmt: skip
    audit.add_argument("--device", default=None, help="hf backend: torch device (default: cuda if available)")
    audit.add_argument("--dtype", default="auto", help="model dtype, e.g. bfloat16 (default: the checkpoint's)")
    audit.add_argument("--overwrite", action="store_true", help="discard answers already in OUT and start again")
    audit.add_argument("--label-sets", default=None, metavar="JSON|FILE",
                       help="declared label sets {dataset: [label, ...]} (JSON or a .json/.yaml file): an answer "
                       "naming a label outside its set names none, as accuracy_reward scores it")  # fmt: skip
    audit.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_grouping_options(audit)

    compare = commands.add_parser(
        "compare",
        help="two models' predictions on the same rows: per-group F1 differences with paired intervals, verdicts",
    )
    compare.add_argument("a", help="predictions.jsonl of model A (the reference)")
    compare.add_argument("b", help="predictions.jsonl of model B (compared against A)")
    compare.add_argument("-o", "--output-dir", required=True, help="where compare.md, compare.json and the plot go")
    compare.add_argument("--overwrite", action="store_true", help="replace another comparison's report in OUT")
    _add_grouping_options(compare)


def _options(parser: argparse.ArgumentParser, items: list[str], flag: str) -> dict[str, Any]:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"{flag} needs KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _audit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fair_trl.audit.run import AuditSettings, audit

    try:
        settings = AuditSettings(
            model=args.model,
            dataset=args.dataset,
            output_dir=args.output_dir,
            split=args.split,
            dataset_options=_options(parser, args.dataset_option, "--dataset-option"),
            backend=args.backend,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            limit=args.limit,
            temperature=args.temperature,
            seed=args.seed,
            attributes=tuple(args.attributes),
            id_column=args.id_column,
            chat_template=args.chat_template,
            bootstrap=args.bootstrap,
            age_bins=None if args.age_bins is None else tuple(args.age_bins),
            max_age=args.max_age,
            device=args.device,
            dtype=args.dtype,
            plots=not args.no_plots,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            label_sets=args.label_sets,
        )
        report, written = audit(settings)
    except (OSError, ValueError) as err:
        print(f"fair-trl audit: {err}", file=sys.stderr)
        return 2
    from fair_trl.audit.report import summary_lines

    info = json.loads(written["fairness"].read_text(encoding="utf-8"))["audit"]
    print(f"{report['samples']} rows scored ({info['resumed']} from an earlier run, {info['answered']} answered now); "
          f"{len(info['image_errors'])} images did not decode; {report['empty_generations']} empty generations; "
          f"{report['no_valid_label']} answers name no valid label")  # fmt: skip
    print("\n".join(summary_lines(report)))
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fair_trl.audit.compare import compare_files, write_comparison

    try:
        comparison = compare_files(
            args.a, args.b, args.attributes, n_bootstrap=args.bootstrap, seed=args.seed,
            age_bins=args.age_bins, max_age=args.max_age,
        )  # fmt: skip
        written = write_comparison(args.output_dir, comparison, plots=not args.no_plots, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        print(f"fair-trl compare: {err}", file=sys.stderr)
        return 2
    for result in comparison["attributes"].values():
        print(result["verdict"])
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


def _build_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from fair_trl.data import BUILDERS
    from fair_trl.data.loading import build_and_save

    if args.name not in BUILDERS:
        parser.error(f"unknown dataset {args.name!r}; expected one of {', '.join(BUILDERS)}")
    options = _options(parser, args.option, "--option")
    data_dir = None if args.data_dir in ("-", "") else args.data_dir
    try:
        summary = build_and_save(
            args.name, data_dir, args.out_dir, test_size=args.test_size, seed=args.seed, progress=True, **options
        )
    except (OSError, ValueError, TypeError) as err:
        print(f"fair-trl build-dataset: {err}", file=sys.stderr)
        return 2
    print(summary)
    print(f"saved to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
