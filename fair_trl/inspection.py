"""A dataset against the column settings of training: the column check and the groups FairGRPO will form.

* `check_columns`: every configured column (domain and demographic) must be in the train dataset,
  whatever the estimator (the fairness log reads the demographic columns under every one of them).
* `inspect_rows`: per domain, rows, label set, the table of groups (`GroupKeyer.key`: a row with any
  attribute unknown is unlabeled, FairGRPO's latent groups) and warnings: small groups, values that did
  not parse, category columns with many values, references outside the domain's label set.
  ``fair-trl inspect`` prints it; `FairGRPOTrainer` logs it once at the start of training.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fair_trl.groups import UNKNOWN, GroupKeyer, InvalidDemographic, domain_key, normalise_attribute
from fair_trl.labels import canonical_labels, label_key, read_label_sets, to_label_set

__all__ = [
    "MANY_CATEGORIES",
    "MIN_GROUP_PROMPTS",
    "ColumnSettings",
    "check_columns",
    "format_inspection",
    "fit_train_groups",
    "inspect_rows",
]

logger = logging.getLogger(__name__)

# A group with fewer prompts has a temperature (sqrt(N) * mean reward) that rests on few prompts.
MIN_GROUP_PROMPTS = 20
# A category column with more distinct values is probably a number or an id (e.g. an age read as a category).
MANY_CATEGORIES = 10
# Above this share of partly known rows, the groups of a domain lean on where those rows were put.
PARTLY_KNOWN_SHARE = 0.1
_EXAMPLES = 3
LATENT = f"{UNKNOWN} (latent groups)"


@dataclasses.dataclass
class ColumnSettings:
    """The `FairGRPOConfig` fields that say how rows become domains, groups and labels (same names, same defaults)."""

    domain_column: str | None = "dataset"
    demographic_columns: list[str] = dataclasses.field(default_factory=lambda: ["sex", "age"])
    demographic_kinds: dict[str, str] | None = None
    age_bins: list[float] = dataclasses.field(default_factory=lambda: [25.0, 50.0, 75.0])
    max_age: float = 120
    solution_column: str = "solution"
    label_sets: dict[str, list[str]] | None = None

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> ColumnSettings:
        """These fields of `config` (a `FairGRPOConfig`, or a recipe's YAML mapping); `overrides` win where not None."""
        get = config.get if isinstance(config, Mapping) else lambda name, default: getattr(config, name, default)
        defaults = cls()
        values = {f.name: get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.label_sets = read_label_sets(settings.label_sets)
        return settings

    def keyer(self) -> GroupKeyer:
        """The training keyer; it logs no warnings, as the report lists the values that did not parse."""
        columns = GroupKeyer(self.demographic_columns, kinds=self.demographic_kinds).columns
        return GroupKeyer(
            self.demographic_columns, self.age_bins, self.max_age, kinds=self.demographic_kinds, warned=set(columns)
        )


def check_columns(column_names: Sequence[str] | None, settings: Any, dataset_name: str = "train_dataset") -> None:
    """Raise when a configured domain or demographic column is not in `column_names` (None: unknown, not checked)."""
    if column_names is None:  # a stream with unknown features, or no dataset: checked per row later
        return
    keyer = GroupKeyer(settings.demographic_columns, kinds=getattr(settings, "demographic_kinds", None))
    wanted = [("domain_column", settings.domain_column)] if settings.domain_column else []
    wanted += [("demographic_columns", column) for column in keyer.columns]
    for setting, column in wanted:
        if column not in column_names:
            raise ValueError(
                f"{dataset_name} has no column {column!r} (FairGRPOConfig.{setting}); its columns are "
                f"{sorted(column_names)}. Name an existing column, or set demographic_columns=[] to train without "
                "demographic groups"
            )


def inspect_rows(
    rows: Iterable[Mapping[str, Any]], settings: ColumnSettings, keyer: GroupKeyer | None = None
) -> dict[str, Any]:
    """What FairGRPO will see in `rows`: per domain its rows, label set and groups, and the warnings.

    `keyer`: one already fitted on `rows` (the trainer's); by default the settings' keyer, fitted here.
    """
    rows = list(rows)
    if keyer is None:
        keyer = settings.keyer()
        keyer.fit(rows, [domain_key(row, settings.domain_column) for row in rows])
    domains: dict[str, dict[str, Any]] = {}
    invalid: dict[str, Counter] = {c: Counter() for c in keyer.columns}
    categories: dict[str, set[str]] = {c: set() for c, kind in keyer.kinds.items() if kind == "category"}
    total = 0
    for row in rows:
        total += 1
        domain = domain_key(row, settings.domain_column)
        entry = domains.setdefault(domain, {"rows": 0, "groups": Counter(), "references": Counter(), "assigned": 0})
        entry["rows"] += 1
        key = keyer.key(row, domain)
        entry["groups"][key or LATENT] += 1
        recorded = keyer.recorded.get(domain, keyer.columns)
        partly_known = not all(_known(keyer, column, row.get(column)) for column in recorded)
        entry["assigned"] += key is not None and partly_known
        reference = row.get(settings.solution_column)
        if reference is not None:
            entry["references"].update(to_label_set(reference if isinstance(reference, str | list) else str(reference)))
        for column in keyer.columns:
            value = row.get(column)
            try:
                parsed = normalise_attribute(column, value, keyer.age_bins, keyer.max_age, keyer.kinds[column])
            except InvalidDemographic:
                invalid[column][repr(value)] += 1
                continue
            if column in categories and parsed is not None:
                categories[column].add(parsed)

    warnings: list[str] = []
    report_domains = {}
    for name, entry in sorted(domains.items()):
        labels, source = _label_set(name, settings.label_sets, entry["references"])
        groups = sorted(entry["groups"].items(), key=lambda kv: (kv[0] == LATENT, -kv[1], kv[0]))
        unknown = entry["groups"].get(LATENT, 0)
        report_domains[name] = {
            "rows": entry["rows"],
            "label_set": list(labels),
            "label_source": source,
            "records": list(keyer.recorded.get(name, keyer.columns)),
            "unknown_share": round(unknown / entry["rows"], 4),
            "partly_known_assigned": entry["assigned"],
            "groups": [{"group": group, "prompts": n, "share": round(n / entry["rows"], 4)} for group, n in groups],
        }
        small = [f"{group} ({n})" for group, n in groups if group != LATENT and n < MIN_GROUP_PROMPTS]
        if small:
            warnings.append(
                f"domain {name!r}: {len(small)} group(s) under {MIN_GROUP_PROMPTS} prompts, whose temperature "
                f"sqrt(N) * mean reward rests on few prompts: {', '.join(small)}"
            )
        if entry["assigned"] > PARTLY_KNOWN_SHARE * entry["rows"]:
            warnings.append(
                f"domain {name!r}: {entry['assigned']} of {entry['rows']} rows are partly known and count in the "
                "commonest group that agrees with them; check the demographic columns"
            )
        if source == "references":
            warnings.append(
                f"domain {name!r} has no declared label set: the reward compares answers with references as "
                "normalised strings; declare label_sets to reject labels outside the set"
            )
        else:
            keys = {label_key(label) for label in labels}
            outside = sorted(label for label in entry["references"] if label_key(label) not in keys)
            if outside:
                warnings.append(f"domain {name!r}: references name labels outside its {source} label set: {outside}")
    for column, values in invalid.items():
        if values:
            examples = ", ".join(value for value, _ in values.most_common(_EXAMPLES))
            warnings.append(
                f"column {column!r} ({keyer.kinds[column]}): {sum(values.values())} values did not parse and count as "
                f"unknown, e.g. {examples}"
            )
    for column, values in categories.items():
        if len(values) > MANY_CATEGORIES:
            warnings.append(
                f"column {column!r} is read as a category with {len(values)} distinct values: each is a group of its "
                f"own; declare its kind ('{column}:age' or '{column}:sex') if it is one"
            )
    return {
        "rows": total,
        "columns": {
            "domain": settings.domain_column,
            "demographic": keyer.specs,
            "solution": settings.solution_column,
        },
        "age_bins": list(keyer.age_bins),
        "domains": report_domains,
        "warnings": warnings,
    }


def _known(keyer: GroupKeyer, column: str, value: Any) -> bool:
    try:
        return normalise_attribute(column, value, keyer.age_bins, keyer.max_age, keyer.kinds[column]) is not None
    except InvalidDemographic:
        return False


def _label_set(
    domain: str, declared: Mapping[str, Sequence[str]] | None, references: Counter
) -> tuple[tuple[str, ...], str]:
    if declared and domain in declared:
        return tuple(declared[domain]), "declared"
    built_in = canonical_labels(domain)
    if built_in is not None:
        return built_in, "built-in"
    return tuple(sorted(references)), "references"


def format_inspection(report: Mapping[str, Any]) -> str:
    """The report as text: one block per domain, then the warnings."""
    columns = report["columns"]
    lines = [
        f"{report['rows']} rows; domain column {columns['domain']!r}; demographic columns "
        f"{columns['demographic'] or 'none (no groups)'}; age bins {report['age_bins']}",
    ]
    for name, domain in report["domains"].items():
        lines += [
            "",
            f"domain {name}: {domain['rows']} rows, {domain['unknown_share']:.1%} unknown (latent groups), "
            f"{domain['partly_known_assigned']} partly known rows in their commonest agreeing group",
            f"  label set ({domain['label_source']}): {', '.join(domain['label_set']) or '-'}",
            f"  demographics it records: {', '.join(domain['records']) or 'none'}",
        ]
        width = max([len("group")] + [len(g["group"]) for g in domain["groups"]])
        lines.append(f"  {'group'.ljust(width)}  {'prompts':>7}  {'share':>6}")
        for group in domain["groups"]:
            lines.append(f"  {group['group'].ljust(width)}  {group['prompts']:>7}  {group['share']:>6.1%}")
    if report["warnings"]:
        lines += ["", f"{len(report['warnings'])} warning(s):"]
        lines += [f"  - {warning}" for warning in report["warnings"]]
    return "\n".join(lines) + "\n"


def inspect_dataset(dataset: Any, settings: ColumnSettings, keyer: GroupKeyer | None = None) -> dict[str, Any]:
    """`inspect_rows` of a `datasets.Dataset`, reading only the columns it needs (images are never decoded)."""
    columns = keyer.columns if keyer is not None else settings.keyer().columns
    wanted = [c for c in (settings.domain_column, settings.solution_column, *columns) if c]
    present = [c for c in dict.fromkeys(wanted) if c in dataset.column_names]
    rows = dataset.select_columns(present).to_list()
    if keyer is None:
        return inspect_rows(rows, settings)
    keyer.fit(rows, [domain_key(row, settings.domain_column) for row in rows])
    # The table's own counts and no warnings (the report lists bad values), with what `keyer` learnt.
    quiet = settings.keyer()
    quiet.recorded, quiet.imputed = keyer.recorded, keyer.imputed
    return inspect_rows(rows, settings, quiet)


def fit_train_groups(keyer: GroupKeyer, dataset: Any, config: Any) -> Any:
    """Fit the trainer's `keyer` on the train `dataset`, log its group table, and return a `TrainerCallback` that
    puts the table in W&B when training begins (None without W&B, or for a stream, which is not read up front)."""
    if dataset is None or getattr(dataset, "column_names", None) is None or not hasattr(dataset, "select_columns"):
        return None
    report = inspect_dataset(dataset, ColumnSettings.from_config(config), keyer)
    logger.info("Groups FairGRPO will form in the train dataset:\n%s", format_inspection(report))
    if "wandb" not in (config.report_to or []):
        return None
    from transformers import TrainerCallback

    class GroupTableToWandb(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import wandb

            if state.is_world_process_zero and wandb.run is not None:
                wandb.log({"fair/groups": wandb.Table(columns=list(TABLE_COLUMNS), data=table_rows(report))})

    return GroupTableToWandb()


TABLE_COLUMNS = ("domain", "group", "prompts", "share")


def table_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """The group tables of every domain as rows of `TABLE_COLUMNS`."""
    return [
        [name, group["group"], group["prompts"], group["share"]]
        for name, domain in report["domains"].items()
        for group in domain["groups"]
    ]
