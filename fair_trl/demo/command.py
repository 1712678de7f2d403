"""`fair-trl demo`'s command line: its options (`ExperimentSettings` and `DemoOptions`) and the `--full` preset."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import HfArgumentParser

from fair_trl.demo.experiment import BASELINE_METHODS, METHODS, NOISE_METHODS, VARIANT_METHODS, ExperimentSettings
from fair_trl.demo.instrument import TRIAL_METHODS
from fair_trl.demo.reference import REFERENCE_DIR, REFERENCE_RESULTS
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
        metadata={"help": "The reference study: every method but the noise arms (main, control, variants, "
                  "baselines) at the quick demo's steps, with FULL_DEMO's seeds where left at their defaults."},
    )  # fmt: skip
    trial: bool = field(
        default=False,
        metadata={"help": "Instrument trial: run only GRPO and the positive control and append the gate's result "
                  "to TRIAL_LOG. Choose benchmark and budget with this, never by looking at FairGRPO."},
    )  # fmt: skip
    noise_check: bool = field(
        default=False,
        metadata={"help": "Run only GRPO and GRPO again with other sampling (and prompt-order) seeds, to measure "
                  "the noise that pairing by seed removes and check that GRPO against itself shows no effect."},
    )  # fmt: skip
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the report goes (untracked)."})
    cache_dir: str = field(default="outputs/demo-cache", metadata={"help": "Where the warm starts are cached."})
    trial_log: str = field(
        default="reports/demo/instrument_trials.jsonl", metadata={"help": "The instrument trial log."}
    )
    rebuild: bool = field(default=False, metadata={"help": "Rewrite the report from OUTPUT_DIR/runs.json only."})
    reference: str = field(
        default=str(REFERENCE_RESULTS),
        metadata={"help": "The reference study's results.json a run with matching settings is checked against."},
    )
    publish: bool = field(
        default=False,
        metadata={"help": "Copy OUTPUT_DIR's report, results and plots to PUBLISH_DIR (the README quotes it)."},
    )
    publish_dir: str = field(
        default=str(REFERENCE_DIR),
        metadata={"help": "Where --publish copies to: the reference study's folder, or a planting-NAME folder in "
                  "it for the same settings on another planting (plantings.md there lists them all)."},
    )  # fmt: skip


# `--full`, the reference study: applied to the settings the user left at their defaults. Steps and
# eval_every stay the quick demo's: the instrument was validated at that one setting.
FULL_DEMO = {"seeds": 20, "secondary_seeds": 10}


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
            print(rebuild(options.output_dir, options.trial_log, options.reference)["gate"]["text"])
        if options.publish:
            print(f"published {options.output_dir} to {publish(options.output_dir, options.publish_dir)}")
        return 0
    chosen = {f.name: getattr(namespace, f.name) for f in fields(ExperimentSettings)}
    defaults = ExperimentSettings().to_dict()
    # --trial and --noise_check fix the methods, so every option that chooses them is refused with them.
    fixed = {
        "--trial": (options.trial, TRIAL_METHODS),
        "--noise_check": (options.noise_check, ("grpo", *NOISE_METHODS)),
    }
    given = {
        "--methods": chosen["methods"] != defaults["methods"],
        "--baselines": options.baselines,
        "--variants": options.variants,
        "--full": options.full,
    }
    chosen_by = [name for name, on in given.items() if on]
    for flag, (wanted, methods) in fixed.items():
        others = [f for f, (w, _) in fixed.items() if w and f != flag]
        if wanted and (chosen_by or others):
            parser.error(f"{flag} runs exactly {list(methods)}; drop {', '.join([*chosen_by, *others])}")
        if wanted:
            chosen["methods"] = list(methods)
    if options.full:
        chosen.update({k: v for k, v in FULL_DEMO.items() if chosen[k] == defaults[k]})
        if chosen["secondary_seeds"] is not None:
            chosen["secondary_seeds"] = min(chosen["secondary_seeds"], chosen["seeds"])  # `--full --seeds 8`
        if chosen["methods"] == defaults["methods"]:
            chosen["methods"] = [name for name, m in METHODS.items() if m.role != "noise"]
    for wanted, extra in ((options.variants, VARIANT_METHODS), (options.baselines, BASELINE_METHODS)):
        if wanted:
            chosen["methods"] = [*chosen["methods"], *(m for m in extra if m not in chosen["methods"])]
    try:
        settings = ExperimentSettings(**chosen)
        settings.check_visible()
    except ValueError as error:
        parser.error(str(error))
    run_demo(
        settings, options.output_dir, options.cache_dir, options.trial_log, trial=options.trial,
        reference=options.reference,
    )  # fmt: skip
    return 0
