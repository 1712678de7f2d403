"""`fair-trl demo`'s command line: its options (`ExperimentSettings` and `DemoOptions`) and the `--full` preset."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import HfArgumentParser

from fair_trl.demo.experiment import BASELINE_METHODS, VARIANT_METHODS, ExperimentSettings
from fair_trl.demo.instrument import TRIAL_METHODS
from fair_trl.demo.report import rebuild
from fair_trl.demo.run import main as run_demo
from fair_trl.demo.run import publish


@dataclass
class DemoOptions:
    """`fair-trl demo` options that are not experiment settings."""

    baselines: bool = field(
        default=False, metadata={"help": "Also run the paper's baselines: RLOO, REINFORCE++, Group DRO, Resampling."}
    )
    variants: bool = field(
        default=False, metadata={"help": "Also run the FairGRPO variants (reward floor, weight cap, recent window)."}
    )
    full: bool = field(
        default=False,
        metadata={"help": "The longer, more decisive run: seeds, steps and eval_every of FULL_DEMO where left at "
                  "their defaults."},
    )  # fmt: skip
    trial: bool = field(
        default=False,
        metadata={"help": "Instrument trial: run only GRPO and the positive control and append the gate's result "
                  "to TRIAL_LOG. Choose benchmark and budget with this, never by looking at FairGRPO."},
    )  # fmt: skip
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the report goes (untracked)."})
    cache_dir: str = field(default="outputs/demo-cache", metadata={"help": "Where the warm starts are cached."})
    trial_log: str = field(
        default="reports/demo/instrument_trials.jsonl", metadata={"help": "The instrument trial log."}
    )
    rebuild: bool = field(default=False, metadata={"help": "Rewrite the report from OUTPUT_DIR/runs.json only."})
    publish: bool = field(
        default=False,
        metadata={"help": "Copy OUTPUT_DIR's report, results and plots to reports/demo/ (the README quotes it)."},
    )


# `--full`: applied to the settings the user left at their defaults.
FULL_DEMO = {"seeds": 10, "steps": 300, "eval_every": 50}


def main(argv: list[str]) -> int:
    """`fair-trl demo ARGV`: parse, then run, rebuild or publish the demo; returns the exit status."""
    parser = HfArgumentParser(
        (ExperimentSettings, DemoOptions),
        prog="fair-trl demo",
        description="GRPO vs FairGRPO (+ positive control, variants, baselines) on the synthetic benchmark, "
        "warm-started; writes OUTPUT_DIR/report.md.",
    )
    namespace = parser.parse_args(argv)
    options = DemoOptions(**{f.name: getattr(namespace, f.name) for f in fields(DemoOptions)})
    if options.rebuild or options.publish:
        if options.rebuild:
            print(rebuild(options.output_dir, options.trial_log)["gate"]["text"])
        if options.publish:
            print(f"published {options.output_dir} to {publish(options.output_dir)}")
        return 0
    chosen = {f.name: getattr(namespace, f.name) for f in fields(ExperimentSettings)}
    defaults = ExperimentSettings().to_dict()
    if options.full:
        chosen.update({k: v for k, v in FULL_DEMO.items() if chosen[k] == defaults[k]})
    if options.trial:
        if options.baselines or options.variants or chosen["methods"] != defaults["methods"]:
            parser.error(f"--trial runs exactly {list(TRIAL_METHODS)}; drop --methods, --baselines and --variants")
        chosen["methods"] = list(TRIAL_METHODS)
    for wanted, extra in ((options.variants, VARIANT_METHODS), (options.baselines, BASELINE_METHODS)):
        if wanted:
            chosen["methods"] = [*chosen["methods"], *(m for m in extra if m not in chosen["methods"])]
    try:
        settings = ExperimentSettings(**chosen)
        settings.check_visible()
    except ValueError as error:
        parser.error(str(error))
    run_demo(settings, options.output_dir, options.cache_dir, options.trial_log, trial=options.trial)
    return 0
