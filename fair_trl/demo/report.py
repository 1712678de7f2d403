"""results.json, report.md and summary.md from the demo's runs (the plots are in `fair_trl.demo.plots`).

`write_report` can be called again on a saved ``runs.json`` (`rebuild`), so the write-up can change
without training again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.demo.benchmark import MIN_VISIBLE_ROWS, ORACLE_RULE, VISIBILITY_RULE
from fair_trl.demo.evaluation import ATTRIBUTES
from fair_trl.demo.experiment import METHODS, ExperimentSettings
from fair_trl.demo.instrument import gate, gate_power, power_text, read_trials
from fair_trl.demo.noise import noise_check, noise_section
from fair_trl.demo.reference import REFERENCE_RESULTS, reference_check
from fair_trl.demo.stats import (
    EXACT_ENDPOINTS,
    HEADLINE_METRICS,
    checkpoint_metrics,
    excludes_zero,
    final_metrics,
    paired_difference,
    seed_summary,
)

__all__ = [
    "AIM", "ENDPOINTS", "analyse", "diff_text", "effect_word", "markdown", "markdown_table", "meets_aim", "rebuild",
    "relative_text", "summary_markdown", "write_report",
]  # fmt: skip

# The target a method is judged by: Delta F1 and PP each at least 25% below GRPO's (the paired difference
# relative to GRPO's mean), each with a 95% interval on the paired difference below 0, and mean F1 at most
# 0.01 lower.
AIM = {"delta_f1_reduction": 0.25, "pp_reduction": 0.25, "max_f1_drop": 0.01}
ENDPOINTS = {"delta_f1": "ΔF1", "pp": "PP"}  # what the aim judges, with their names in the text
SUMMARY_METRICS = (*HEADLINE_METRICS, "exact", *EXACT_ENDPOINTS)
# Roles the verdict leaves out: the control checks the instrument, the noise arms are GRPO itself.
NOT_JUDGED = ("control", "noise")


def _by_method(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    for method_runs in grouped.values():
        method_runs.sort(key=lambda r: r["seed"])
    return grouped


def analyse(
    runs: list[dict[str, Any]],
    settings: ExperimentSettings,
    context: dict[str, Any] | None = None,
    trials: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """results.json: per-method summaries, differences to GRPO, the gate, the verdict, settings and context.

    `context`: facts about the data and warm starts (`fair_trl.demo.run.context`); `trials`: the
    instrument trial log as read when the report is written.
    """
    grouped = _by_method(runs)
    # {method: {seed: metrics}}: methods may run different numbers of seeds, and pair on the ones they share.
    finals = {m: {r["seed"]: final_metrics(r) for r in rs} for m, rs in grouped.items()}
    reference = finals["grpo"]
    methods: dict[str, Any] = {}
    for method, by_seed in finals.items():
        values = list(by_seed.values())
        entry: dict[str, Any] = {"seeds": list(by_seed)}
        entry |= {name: seed_summary([v[name] for v in values], settings.n_bootstrap) for name in SUMMARY_METRICS}
        entry["label"] = METHODS[method].label
        entry["role"] = METHODS[method].role
        entry["by_attribute"] = {
            attribute: {
                key: seed_summary([r["checkpoints"][-1][attribute][key] for r in grouped[method]], 0)
                for key in ("f1", "delta_f1", "EOD", "PP")
            }
            for attribute in ATTRIBUTES
        }
        entry["group_f1"] = _group_values(grouped[method], "group_f1")
        entry["group_exact"] = _group_values(grouped[method], "group_exact")
        entry["distinct_answers"] = [r["checkpoints"][-1]["distinct_answers"] for r in grouped[method]]
        # What RL did to the seed's warm start (step 0, the same for every method of a seed).
        starts = [checkpoint_metrics(r["checkpoints"][0]) for r in grouped[method]]
        entry["vs_warm_start"] = {
            name: paired_difference([v[name] for v in values], [s[name] for s in starts]) for name in SUMMARY_METRICS
        }
        if method != "grpo":
            entry["vs_grpo"] = _versus(by_seed, reference)
        methods[method] = entry
    context = dict(context or {})
    if context.get("timing"):
        # What the whole experiment costs from scratch: cached warm starts and runs as they cost when they ran.
        recorded = sum(r["cpu_seconds"] for r in runs) + sum(w["cpu_seconds"] for w in context.get("warm_starts", []))
        context["timing"] = {**context["timing"], "cpu_seconds_from_scratch": round(recorded, 1)}
    results = {
        "methods": methods,
        "per_group_difference": {m: _per_group_difference(grouped[m], grouped["grpo"]) for m in grouped if m != "grpo"},
        "settings": settings.to_dict(),
        "context": context,
        "instrument_trials": trials or [],
    }
    results["control_rule"] = ORACLE_RULE  # as the report describes it, even after the code's rule changes
    results["gate"] = gate(results)
    results["verdict"] = _verdict(methods, results["gate"])
    arms = {m: METHODS[m].label for m in grouped if METHODS[m].role == "noise"}
    if arms:
        results["noise_check"] = noise_check(finals, arms)
    return results


def _versus(values: dict[int, dict[str, float]], reference: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Paired differences to GRPO over the seeds both ran, and ΔF1's and PP's change relative to GRPO's mean."""
    seeds = sorted(set(values) & set(reference))
    ours, theirs = [values[s] for s in seeds], [reference[s] for s in seeds]
    out: dict[str, Any] = {
        name: paired_difference([v[name] for v in ours], [r[name] for r in theirs]) for name in SUMMARY_METRICS
    }
    out["seeds"] = len(seeds)
    for name in ENDPOINTS:
        base = float(np.mean([r[name] for r in theirs]))
        diff = out[name]
        out[f"{name}_relative"] = {
            "mean": diff["mean"] / base if base > 0 else float("nan"),
            "ci": [c / base if base > 0 else float("nan") for c in diff["ci"]],
        }
    return out


def _group_values(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """{attribute: {group: summary over seeds of the final checkpoint's `key` value of the group}}."""
    out: dict[str, dict[str, Any]] = {}
    for attribute in ATTRIBUTES:
        groups = sorted({g for r in runs for g in r["checkpoints"][-1][attribute][key]})
        out[attribute] = {
            g: seed_summary([r["checkpoints"][-1][attribute][key].get(g, np.nan) for r in runs], 0) for g in groups
        }
    return out


def _per_group_difference(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired F1 difference to GRPO of every (dataset, attribute, group) cell (the paper's Fig. 3)."""
    cells: dict[str, Any] = {}
    seeds = {r["seed"] for r in runs} & {r["seed"] for r in reference}
    runs = [r for r in runs if r["seed"] in seeds]
    reference = [r for r in reference if r["seed"] in seeds]
    for attribute in ATTRIBUTES:
        final = [r["checkpoints"][-1][attribute]["per_group_f1"] for r in runs]
        base = [r["checkpoints"][-1][attribute]["per_group_f1"] for r in reference]
        for dataset in sorted(final[0]):
            for group in sorted(final[0][dataset]):
                ours = [f.get(dataset, {}).get(group, np.nan) for f in final]
                theirs = [b.get(dataset, {}).get(group, np.nan) for b in base]
                cells[f"{dataset}/{attribute}={group}"] = paired_difference(ours, theirs)
    return cells


def effect_word(diff: dict[str, Any], relative: dict[str, Any], aim: float) -> str:
    """What the intervals say about one endpoint: "reduces", "increases", "no effect" or "inconclusive".

    `diff`: the paired difference to GRPO; `relative`: the same relative to GRPO's mean; `aim`: the
    relative reduction the aim asks for. "no effect" only when the relative interval rules out changes
    as large as the aim either way; an interval that spans 0 and reaches that far says nothing.
    """
    low, high = diff["ci"]
    if high < 0:
        return "reduces"
    if low > 0:
        return "increases"
    rel_low, rel_high = relative["ci"]
    if -aim < rel_low and rel_high < aim:
        return "no effect"
    return "inconclusive"  # also when an interval is undefined (one seed, or GRPO's mean is 0)


def meets_aim(entry: dict[str, Any]) -> bool:
    vs = entry["vs_grpo"]
    cuts = all(
        vs[f"{name}_relative"]["mean"] <= -AIM[f"{name}_reduction"] and vs[name]["ci"][1] < 0 for name in ENDPOINTS
    )
    return bool(cuts and vs["f1"]["mean"] >= -AIM["max_f1_drop"])


AIM_TEXT = (
    "Aim: ΔF1 and PP each at least 25% below GRPO's (the paired difference relative to GRPO's mean), each with a "
    "95% interval on the paired difference below 0, and F1 at most 0.01 lower. Per endpoint, *reduces* / "
    "*increases*: the interval on the paired difference excludes 0 below / above; *no effect*: the interval on the "
    "relative change lies within ±25%, so it rules out an effect as large as the aim; *inconclusive*: neither, "
    "these seeds cannot tell an effect of the aim's size from none."
)


def _verdict(methods: dict[str, Any], instrument: dict[str, Any]) -> dict[str, Any]:
    """Per method (the control and the noise arms aside) and endpoint, what the intervals say, in plain words."""
    lines = []
    reaching = []
    words: dict[str, dict[str, str]] = {}
    for name, entry in methods.items():
        if name == "grpo" or entry["role"] in NOT_JUDGED:
            continue
        vs = entry["vs_grpo"]
        words[name] = {
            e: effect_word(vs[e], vs[f"{e}_relative"], AIM[f"{e}_reduction"]) for e in ENDPOINTS
        }  # fmt: skip
        if meets_aim(entry):
            reaching.append(name)
        endpoints = "; ".join(
            f"{title} {relative_text(vs[f'{e}_relative'], title)}: {words[name][e]}" for e, title in ENDPOINTS.items()
        )
        lines.append(
            f"{entry['label']} ({vs['seeds']} seeds): {endpoints}; F1 {diff_text(vs['f1'])}: "
            + ("reaches the aim." if name in reaching else "misses the aim.")
            + ("" if vs["f1"]["mean"] >= -AIM["max_f1_drop"] else " F1 drops by more than 0.01.")
        )
    head = AIM_TEXT
    if not instrument["valid"]:
        head += " The instrument is not valid at these settings, so none of this is evidence about the methods."
    if reaching:
        tail = "Aim reached by: " + ", ".join(methods[m]["label"] for m in reaching) + "."
    elif lines:
        tail = "Aim not reached by any method."
    else:
        tail = "No method besides GRPO, the control and the noise arms was run, so there is nothing to judge."
    return {
        "methods_reaching_aim": reaching,
        "words": words,
        "text": "\n".join([head, *(f"- {line}" for line in lines), tail]),
    }


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------


def _pm(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} [{summary['ci'][0]:.3f}, {summary['ci'][1]:.3f}]"


def diff_text(d: dict[str, Any]) -> str:
    star = " *" if excludes_zero(d["ci"]) else ""
    return f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]{star}"


def relative_text(rel: dict[str, Any], metric: str = "ΔF1") -> str:
    if not np.isfinite(rel["mean"]):
        return f"n/a (GRPO's {metric} is 0)"
    return f"{rel['mean']:+.0%} [{rel['ci'][0]:+.0%}, {rel['ci'][1]:+.0%}]"


SECONDARY_TEXT = (
    "Secondary endpoints, fixed before the study, paired by seed (95% t interval; * = excludes 0): EOD and F1 "
    "against GRPO; exact-match accuracy of the worst demographic group against GRPO; the planted cells' "
    "exact-match gain over the seed's warm start, and its difference to GRPO's gain; and what the other rows "
    "(the majority) gain or lose against GRPO."
)


def _secondary_table(methods: dict[str, Any]) -> list[str]:
    rows = []
    for e in methods.values():
        vs, start = e.get("vs_grpo"), e["vs_warm_start"]
        versus = [diff_text(vs[k]) for k in ("eod", "f1", "worst_group_exact", "planted_exact")] if vs else ["-"] * 4
        rows.append([e["label"], str(len(e["seeds"])), *versus[:3], diff_text(start["planted_exact"]), versus[3],
                     diff_text(vs["other_exact"]) if vs else "-"])  # fmt: skip
    header = ["method", "seeds", "EOD vs GRPO", "F1 vs GRPO", "worst-group exact vs GRPO",
              "planted exact gain since warm start", "planted gain vs GRPO", "others' exact vs GRPO"]  # fmt: skip
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _overrides(settings: dict[str, Any]) -> str:
    return ", ".join(f"`{item}`" for item in settings["benchmark"]) or "none (SyntheticConfig defaults)"


def _command(settings: dict[str, Any]) -> str:
    """The `fair-trl demo` call that repeats these settings (only what differs from the defaults)."""
    defaults = ExperimentSettings().to_dict()
    parts = ["fair-trl demo"]
    for name, value in settings.items():
        if name not in defaults or value == defaults[name] or name == "workers":
            continue
        if name == "benchmark":
            parts += [f"-b '{item}'" for item in value]
        elif isinstance(value, list):
            parts.append(f"--{name} {' '.join(map(str, value))}")
        else:
            parts.append(f"--{name} {value}")
    return " ".join(parts)


def _trial_rows(trials: list[dict[str, Any]], two_part: bool) -> list[list[str]]:
    """The trial log as table rows; `two_part` adds the control rule and the second gate's columns."""
    defaults = ExperimentSettings().to_dict()
    rows = []
    for i, trial in enumerate(trials, start=1):
        changed = [
            ("-b " + " -b ".join(v) if v else "no -b") if k == "benchmark" else f"{k}={v}"
            for k, v in trial["settings"].items()
            if v != defaults.get(k)
        ]
        diff = trial["control_vs_grpo_delta_f1"]
        row = [str(i), "; ".join(changed) or "defaults"]
        if two_part:
            # Trials before the rule was written down drew planted rows half the time, and checked no second part.
            row.append(trial.get("control_rule", "planted rows half the draws"))
        row += [
            f"{trial['grpo']['delta_f1']:.3f}",
            f"{trial['control']['delta_f1']:.3f}",
            f"{diff['mean']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]",
        ]
        if two_part:
            learns = trial.get("grpo_f1_vs_warm_start")
            row.append(f"{learns['mean']:+.3f} [{learns['ci'][0]:+.3f}, {learns['ci'][1]:+.3f}]" if learns else "-")
        rows.append([*row, "valid" if trial["valid"] else "invalid", f"{trial['wall_seconds'] / 60:.1f}"])
    return rows


def _step0_table(context: dict[str, Any]) -> list[str]:
    step0 = context.get("step0")
    if not step0:
        return []
    groups = [(a, g) for a in ATTRIBUTES for g in step0["group_exact"][a]]
    header = ["", *(f"{a}={g}" for a, g in groups), "planted", "other", "all", "in \\boxed{}"]
    row = [
        "exact-match accuracy",
        *(f"{step0['group_exact'][a][g]:.3f}" for a, g in groups),
        f"{step0['planted_exact'].get('planted', float('nan')):.3f}",
        f"{step0['planted_exact'].get('other', float('nan')):.3f}",
        f"{step0['exact']:.3f}",
        f"{step0['boxed']:.3f}",
    ]
    f1 = ["F1 (suite)", *(f"{step0['group_f1'][a][g]:.3f}" for a, g in groups), "", "", "", ""]
    return markdown_table(header, [row, f1])


def markdown(results: dict[str, Any]) -> str:
    methods = results["methods"]
    settings = results["settings"]
    context = results.get("context", {})
    data = context.get("data", {})
    timing = context.get("timing", {})
    lines = [results["gate"]["text"], "", "# GRPO vs FairGRPO on the synthetic clinical benchmark", ""]
    lines += [
        f"Reproduce: `{_command(settings)}` (`make demo` runs the defaults). Benchmark overrides: "
        f"{_overrides(settings)}. {len(settings['methods'])} methods x {_seeds_text(settings)}; per seed a warm "
        f"start of {settings['sft_steps']} SFT steps (batch {settings['sft_batch_size']}, lr "
        f"{settings['sft_learning_rate']}) shared by every method, then {settings['steps']} RL steps of "
        f"{settings['prompts_per_step']} prompts x {settings['num_generations']} completions (lr "
        f"{settings['learning_rate']}, temperature {settings['temperature']}, at most "
        f"{settings['max_completion_length']} tokens) with the strict `accuracy_reward`; the held-out set is "
        f"answered greedily every {settings['eval_every']} steps.",
        "",
    ]
    if timing:
        lines += [_timing_text(timing), ""]
    lines += ["## Instrument", "", *_instrument_section(results), ""]
    lines += ["## Benchmark", "", *_benchmark_section(context, data), ""]
    lines += [
        "## Warm start (step 0, mean over seeds)",
        "",
        "What RL starts from: SFT on the pre-training part, which under-represents the disadvantaged groups.",
        "",
        *_step0_table(context),
        "",
    ]
    lines += ["## Verdict", "", *results["verdict"]["text"].splitlines(), ""]
    lines += [
        "## Table 2: final checkpoint, mean ± std over seeds [95% bootstrap interval of the mean]",
        "",
        "F1 and accuracy are the suite's (one-vs-rest per class, per-dataset group means); ΔF1, EOD and PP are each "
        "averaged over the age and sex attributes; exact is the share of answers naming exactly the reference labels.",
        "",
    ]
    lines += markdown_table(
        ["method", "F1", "Acc", "exact", "ΔF1", "EOD", "PP"],
        [[e["label"], *(_pm(e[k]) for k in ("f1", "acc", "exact", "delta_f1", "eod", "pp"))] for e in methods.values()],
    )
    lines += ["", "## Differences to GRPO (paired by seed; 95% t interval; * = excludes 0)", ""]
    rows = []
    for e in methods.values():
        if "vs_grpo" not in e:
            continue
        vs = e["vs_grpo"]
        rows.append([e["label"], e["role"], str(vs.get("seeds", len(vs["f1"]["values"]))),
                     diff_text(vs["delta_f1"]), relative_text(vs["delta_f1_relative"]), diff_text(vs["pp"]),
                     relative_text(vs["pp_relative"], "PP"),
                     *(diff_text(vs[k]) for k in ("f1", "exact", "eod"))])  # fmt: skip
    lines += markdown_table(
        ["method", "role", "seeds", "ΔF1 diff", "ΔF1 change", "PP diff", "PP change", "F1 diff", "exact diff",
         "EOD diff"],
        rows,
    )  # fmt: skip
    lines += ["", "## Secondary endpoints", "", SECONDARY_TEXT, "", *_secondary_table(methods)]
    if "noise_check" in results:
        lines += ["", "## Noise check", "", *noise_section(results["noise_check"])]
    variants = [m for m in methods if METHODS[m].role in ("variant", "baseline")]
    if variants:
        lines += ["", "Variants and baselines:", ""]
        lines += [f"- {METHODS[m].label} ({METHODS[m].role}): {METHODS[m].description}" for m in variants]
    lines += ["", "## ΔF1 per attribute (mean ± std over seeds)", ""]
    lines += markdown_table(
        ["method", *(f"ΔF1 {a}" for a in ATTRIBUTES), *(f"EOD {a}" for a in ATTRIBUTES)],
        [
            [
                e["label"],
                *(f"{e['by_attribute'][a]['delta_f1']['mean']:.3f} ± {e['by_attribute'][a]['delta_f1']['std']:.3f}"
                  for a in ATTRIBUTES),
                *(f"{e['by_attribute'][a]['EOD']['mean']:.3f} ± {e['by_attribute'][a]['EOD']['std']:.3f}"
                  for a in ATTRIBUTES),
            ]
            for e in methods.values()
        ],
    )  # fmt: skip
    groups = [(a, g) for a in ATTRIBUTES for g in methods["grpo"]["group_f1"][a]]
    for key, title in (("group_f1", "F1 (suite)"), ("group_exact", "exact-match accuracy")):
        lines += ["", f"## Per-group {title}, final checkpoint, mean over seeds", ""]
        lines += markdown_table(
            ["method", *(f"{a}={g}" for a, g in groups)],
            [[e["label"], *(f"{e[key][a].get(g, {'mean': float('nan')})['mean']:.3f}" for a, g in groups)]
             for e in methods.values()],
        )  # fmt: skip
    lines += [
        "",
        "## Distinct answers of the final policy, per seed",
        "",
        "How many different label sets the greedy policy names over the held-out set (a policy collapsed onto "
        "constant answers names a handful; the benchmark has "
        f"{data.get('distinct_references', '?')} distinct reference answers).",
        "",
    ]
    lines += markdown_table(
        ["method", *(f"seed {s}" for s in range(max(len(e["distinct_answers"]) for e in methods.values())))],
        [[e["label"], *map(str, e["distinct_answers"])] for e in methods.values()],
    )
    lines += [
        "",
        "## Plots",
        "",
        "- `curves.png`: F1, accuracy and ΔF1 on the held-out set against step (the paper's Fig. 2 a-c).",
        "- `pareto.png`: F1 against ΔF1 at every checkpoint, with the Pareto frontier (Fig. 2 e).",
        "- `group_f1_curves.png`: per-group F1 on the held-out set against step, GRPO vs FairGRPO (RQ2).",
        "- `group_weights.png`: the weight FairGRPO gave each demographic group's prompts against step.",
        "- `group_f1_difference.png`: per-group F1, FairGRPO minus GRPO, per dataset (Fig. 3).",
        "- `train_reward.png`: training reward per demographic group against step, per method.",
        "",
        "![curves](curves.png)",
        "![pareto](pareto.png)",
        "![group F1 curves](group_f1_curves.png)",
        "![group weights](group_weights.png)",
        "![group F1 difference](group_f1_difference.png)",
        "![training reward](train_reward.png)",
        "",
    ]
    check = results.get("reference_check")
    if check:
        lines += ["## Reference check", "", *check["text"].splitlines(), ""]
    return "\n".join(lines)


def _seeds_text(settings: dict[str, Any]) -> str:
    secondary = settings.get("secondary_seeds")
    if secondary is None or secondary == settings["seeds"]:
        return f"{settings['seeds']} seeds"
    return f"{settings['seeds']} seeds ({secondary} for variants and baselines, paired with GRPO's first {secondary})"


def _timing_text(timing: dict[str, Any]) -> str:
    text = (
        f"Time: {timing['wall_seconds'] / 60:.1f} min wall clock on {timing['cpus']} CPU(s) with {timing['workers']} "
        f"worker(s), warm starts included ({timing['warm_started']} trained, {timing['warm_cached']} from the cache; "
        f"RL runs {timing.get('runs_trained', '?')} trained, {timing.get('runs_cached', 0)} from the cache); "
        f"{timing['cpu_seconds'] / 60:.1f} CPU-minutes over all runs, so about "
        f"{timing['cpu_seconds'] / timing['workers'] / 60:.1f} min on {timing['workers']} free cores. Load average "
        f"during the run: {timing['load_average']:.1f}."
    )
    scratch = timing.get("cpu_seconds_from_scratch")
    if scratch is not None and (timing["warm_cached"] or timing.get("runs_cached")):
        text += (
            f" From scratch, the cached parts counted as they cost when they ran: {scratch / 60:.1f} CPU-minutes, "
            f"about {scratch / timing['workers'] / 60:.1f} min on {timing['workers']} free cores."
        )
    return text


def _instrument_section(results: dict[str, Any]) -> list[str]:
    trials = results.get("instrument_trials", [])
    log = (
        "Benchmark and budget were chosen by looking only at GRPO and this control: `fair-trl demo --trial` runs "
        "just those two methods and appends its result to `reports/demo/instrument_trials.jsonl`, which nothing "
        f"else writes. Every trial in that log when this report was written ({len(trials)}), in order"
    )
    # A report describes the gate and control its own run had: results from before the written-down rule
    # and the second gate keep their own description.
    two_part = "grpo_f1_change" in results["gate"]
    if two_part:
        rule = results.get("control_rule", "planted-disadvantaged rows drawn as often as all others together")
        description = (
            "The gate, two parts at the final checkpoint, paired by seed: GRPO with oracle oversampling (knowledge "
            f"no method has: {rule}) must cut ΔF1 versus GRPO with a 95% t interval that excludes 0; and GRPO must "
            "not lose F1 against its warm start on average (RL that makes the model worse is not the paper's "
            f"setting). {log} (earlier trials checked the first part only):"
        )
    else:
        description = (
            "The gate: GRPO with oracle oversampling (planted-disadvantaged rows drawn as often as all others "
            "together, knowledge no method has) must cut ΔF1 versus GRPO at the final checkpoint with a paired 95% "
            f"interval that excludes 0. {log}:"
        )
    power = gate_power(results)
    lines = [results["gate"]["text"], *(["", power_text(power)] if power else []), "", description, ""]
    if trials:
        header = ["#", "settings (differences from today's defaults)"]
        header += ["control rule"] if two_part else []
        header += ["GRPO ΔF1", "control ΔF1", "control - GRPO ΔF1 [95% CI]"]
        header += ["GRPO F1 - warm start [95% CI]"] if two_part else []
        lines += markdown_table([*header, "gate", "min"], _trial_rows(trials, two_part))
    else:
        lines.append("(no trials logged)")
    return lines


def _benchmark_section(context: dict[str, Any], data: dict[str, Any]) -> list[str]:
    truth = context.get("planted", {})
    lines = []
    if truth:
        lines += [truth["description"], ""]
        lines += ["Planted disadvantaged groups and their rules (label shift), per domain:", ""]
        lines += markdown_table(
            ["domain", "groups (shift)", "best achievable exact accuracy per group"],
            [
                [
                    domain,
                    ", ".join(f"{g} ({r['shift']})" for g, r in info["rules"].items()) or "-",
                    ", ".join(f"{g} {v:.2f}" for g, v in info["best_accuracy"].items()),
                ]
                for domain, info in truth["domains"].items()
            ],
        )
        lines.append("")
    if data:
        parts = data["parts"]
        lines.append(
            "Rows (planted-disadvantaged by released demographics): "
            + ", ".join(f"{name} {p['rows']} ({p['planted_disadvantaged']})" for name, p in parts.items())
            + ". Held-out rows per group: "
            + ", ".join(f"{g} {n}" for g, n in data["eval_group_rows"].items())
            + "."
        )
        cells = data.get("planted_cell_rows")
        if cells:
            lines += [
                "",
                f"Held-out rows per planted cell (checked before training; {VISIBILITY_RULE}, so the demo refuses a "
                f"planting with a cell under {MIN_VISIBLE_ROWS} rows): "
                + ", ".join(f"{cell} {n}" for cell, n in cells.items())
                + ".",
            ]
    return lines


def summary_markdown(results: dict[str, Any]) -> str:
    """The short results table quoted in the project README (also written as summary.md)."""
    settings = results["settings"]
    rows = []
    for e in results["methods"].values():
        vs = e.get("vs_grpo")
        rows.append(
            [
                e["label"],
                f"{e['f1']['mean']:.3f} ± {e['f1']['std']:.3f}",
                f"{e['delta_f1']['mean']:.3f} ± {e['delta_f1']['std']:.3f}",
                f"{e['exact']['mean']:.3f} ± {e['exact']['std']:.3f}",
                diff_text(vs["delta_f1"]) if vs else "-",
                relative_text(vs["delta_f1_relative"]) if vs else "-",
                relative_text(vs["pp_relative"], "PP") if vs else "-",
                diff_text(vs["f1"]) if vs else "-",
            ]
        )
    lines = [
        results["gate"]["text"],
        "",
        f"{_seeds_text(settings)} x {settings['steps']} RL steps per method after a shared {settings['sft_steps']}-"
        f"step warm start; benchmark overrides: {_overrides(settings)}. Mean ± std over seeds at the final "
        "checkpoint; changes are paired by seed against GRPO with 95% t intervals (* = excludes 0).",
        "",
        *markdown_table(["method", "F1", "ΔF1", "exact", "ΔF1 vs GRPO", "ΔF1 change", "PP change", "F1 vs GRPO"], rows),
        "",
        *results["verdict"]["text"].splitlines(),
        "",
        SECONDARY_TEXT,
        "",
        *_secondary_table(results["methods"]),
    ]
    timing = results.get("context", {}).get("timing")
    if timing:
        lines += ["", _timing_text(timing)]
    return "\n".join(lines) + "\n"


def write_report(
    runs: list[dict[str, Any]],
    settings: ExperimentSettings,
    output_dir: str | Path,
    context: dict[str, Any] | None = None,
    trial_log: str | Path | None = None,
    reference: str | Path | None = REFERENCE_RESULTS,
) -> dict[str, Any]:
    """Analyse the runs and write results.json, report.md, summary.md and the plots to `output_dir`.

    `reference`: the reference study's results.json this run is checked against (None: no check).
    """
    from fair_trl.demo.plots import write_plots

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trials = read_trials(trial_log) if trial_log is not None else []
    results = analyse(runs, settings, context, trials)
    results["reference_check"] = reference_check(results, reference)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "report.md").write_text(markdown(results))
    (output_dir / "summary.md").write_text(summary_markdown(results))
    write_plots(runs, results, output_dir)
    return results


def rebuild(
    output_dir: str | Path, trial_log: str | Path | None = None, reference: str | Path | None = REFERENCE_RESULTS
) -> dict[str, Any]:
    """Rewrite the report and plots from the runs.json of an earlier demo."""
    saved = json.loads((Path(output_dir) / "runs.json").read_text())
    settings = ExperimentSettings(**saved["settings"])
    return write_report(saved["runs"], settings, output_dir, saved.get("context"), trial_log, reference)
