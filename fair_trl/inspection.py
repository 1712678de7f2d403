"""A dataset against the column settings of training: which columns are used, and the groups FairGRPO will form.

* `resolve_columns`: the domain and demographic columns a dataset gives the settings. A setting left at
  its `AUTO` default takes the default column (``dataset``; ``sex`` and ``age``) where the dataset has
  it and drops it where not, which `ResolvedColumns.note` says; a column named explicitly must be there,
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

from fair_trl.groups import (
    AUTO,
    DEFAULT_DEMOGRAPHIC_COLUMNS,
    DEFAULT_DOMAIN_COLUMN,
    UNKNOWN,
    GroupKeyer,
    InvalidDemographic,
    domain_key,
    is_auto,
    normalise_attribute,
    read_demographic_columns,
)
from fair_trl.labels import canonical_labels, label_key, read_label_sets, to_label_set

__all__ = [
    "MANY_CATEGORIES",
    "MIN_GROUP_PROMPTS",
    "ColumnSettings",
    "ResolvedColumns",
    "dataset_column_names",
    "format_inspection",
    "fit_train_groups",
    "inspect_rows",
    "resolve_columns",
    "resolve_train_columns",
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

    domain_column: str | None = AUTO
    demographic_columns: list[str] = dataclasses.field(default_factory=lambda: [AUTO])
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
        columns = read_demographic_columns(self.demographic_columns)
        names = GroupKeyer(columns, kinds=self.demographic_kinds).columns
        return GroupKeyer(columns, self.age_bins, self.max_age, kinds=self.demographic_kinds, warned=set(names))


@dataclasses.dataclass(frozen=True)
class ResolvedColumns:
    """The column settings a dataset resolved (`resolve_columns`), and the default columns it lacks."""

    domain_column: str | None
    demographic_columns: list[str]
    demographic_kinds: dict[str, str] | None
    missing_defaults: tuple[str, ...] = ()
    column_names: tuple[str, ...] | None = None

    def write_to(self, settings: Any) -> Any:
        """Set these three fields on `settings` (a `FairGRPOConfig` or `ColumnSettings`); returns it."""
        settings.domain_column = self.domain_column
        settings.demographic_columns = list(self.demographic_columns)
        settings.demographic_kinds = dict(self.demographic_kinds) if self.demographic_kinds else None
        return settings

    def note(self, dataset_name: str = "train_dataset", latent_groups: bool = True) -> str | None:
        """What training does without the default columns the dataset lacks, and how to declare others; None if none.

        `latent_groups`: the estimator clusters prompts without demographics into latent groups (FairGRPO's).
        """
        if not self.missing_defaults:
            return None
        domain_missing = DEFAULT_DOMAIN_COLUMN in self.missing_defaults
        demographics_missing = [c for c in DEFAULT_DEMOGRAPHIC_COLUMNS if c in self.missing_defaults]
        lacks = []
        if domain_missing:
            lacks.append(f"column {DEFAULT_DOMAIN_COLUMN!r} (the default domain_column)")
        if demographics_missing:
            names = ", ".join(repr(c) for c in demographics_missing)
            lacks.append(f"column(s) {names} (the default demographic_columns)")
        effects = []
        if domain_missing:
            effects.append("every row is in one domain")
        if not self.demographic_columns:
            groups = (
                "every prompt goes to latent groups found by clustering its rewards (FairGRPO-ND)"
                if latent_groups
                else "no prompt has a demographic group"
            )
            effects.append(f"{groups} and no fairness metrics are logged")
        elif demographics_missing:
            effects.append(f"demographic groups come from {', '.join(repr(c) for c in self.demographic_columns)} only")
        columns = f" Its columns are {sorted(self.column_names)}." if self.column_names is not None else ""
        return (
            f"{dataset_name} has no {' and no '.join(lacks)}: {'; '.join(effects)}.{columns} If your data records "
            "them under other names, declare them, e.g. domain_column='site', demographic_columns=['PatientSex:sex', "
            "'PatientAge:age'] (YAML and command line: the same keys); domain_column=None and demographic_columns=[] "
            "say there are none and silence this."
        )


def resolve_columns(
    column_names: Sequence[str] | None, settings: Any, dataset_name: str = "train_dataset"
) -> ResolvedColumns:
    """The domain and demographic columns `settings` (a `FairGRPOConfig` or `ColumnSettings`) use on a dataset of
    `column_names`.

    A setting left at `AUTO` takes each default column the dataset has (``dataset``; ``sex``, ``age``) and drops
    the others (listed in `missing_defaults`). A column named explicitly and missing is an error naming it and the
    dataset's columns. `column_names` None (a stream whose columns are unknown): the default columns are kept, a
    row lacking one reading as unknown, and explicit columns are not checked.
    """
    known = None if column_names is None else tuple(column_names)

    def has(column: str) -> bool:
        return known is None or column in known

    missing: list[str] = []
    domain = settings.domain_column
    if is_auto(domain):
        domain = DEFAULT_DOMAIN_COLUMN if has(DEFAULT_DOMAIN_COLUMN) else None
        if domain is None:
            missing.append(DEFAULT_DOMAIN_COLUMN)
    elif domain is not None and not has(domain):
        raise _missing_column("domain_column", domain, known, dataset_name)

    kinds = getattr(settings, "demographic_kinds", None)
    if is_auto(settings.demographic_columns):
        demographics = [c for c in DEFAULT_DEMOGRAPHIC_COLUMNS if has(c)]
        missing += [c for c in DEFAULT_DEMOGRAPHIC_COLUMNS if not has(c)]
        kinds = {c: k for c, k in (kinds or {}).items() if c in demographics} or None
    else:
        demographics = list(settings.demographic_columns)
        for column in GroupKeyer(demographics, kinds=kinds).columns:
            if not has(column):
                raise _missing_column("demographic_columns", column, known, dataset_name)
    return ResolvedColumns(domain, demographics, kinds, tuple(missing), known)


def _missing_column(setting: str, column: str, known: Sequence[str], dataset_name: str) -> ValueError:
    way_out = (
        "set domain_column=None to put every row in one domain"
        if setting == "domain_column"
        else "set demographic_columns=[] to train without demographic groups"
    )
    return ValueError(
        f"{dataset_name} has no column {column!r} (FairGRPOConfig.{setting}); its columns are {sorted(known)}. "
        f"Name an existing column, or {way_out}"
    )


def resolve_train_columns(dataset: Any, config: Any, main_process: bool, latent_groups: bool) -> None:
    """Write the columns `dataset` resolves for `config`'s settings into `config` (`resolve_columns`).

    At construction, not mid-run: a column named explicitly and missing is an error. Default columns the data
    lacks are dropped, said once (by the main process). A stream without known features is resolved by its
    first row.
    """
    resolved = resolve_columns(dataset_column_names(dataset), config)
    resolved.write_to(config)
    note = resolved.note(latent_groups=latent_groups)
    if note and main_process:
        logger.warning(note)


def dataset_column_names(dataset: Any) -> list[str] | None:
    """The columns of `dataset`; for a stream whose features are unknown, the keys of its first row.

    None when there is nothing to read them from (no dataset, an empty stream).
    """
    if dataset is None:
        return None
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    if hasattr(dataset, "take"):  # a datasets.IterableDataset without features: its rows say
        first = next(iter(dataset.take(1)), None)
        return list(first) if isinstance(first, Mapping) else None
    return None


def inspect_rows(
    rows: Iterable[Mapping[str, Any]], settings: ColumnSettings, keyer: GroupKeyer | None = None
) -> dict[str, Any]:
    """What FairGRPO will see in `rows`: per domain its rows, label set and groups, and the warnings.

    `keyer`: one already fitted on `rows` (the trainer's); by default the settings' keyer, fitted here. `AUTO`
    settings are resolved against the rows' keys, and a default column they lack is the first warning.
    """
    rows = list(rows)
    note = None
    if is_auto(settings.domain_column) or is_auto(settings.demographic_columns):
        settings, note = _resolved(settings, list(dict.fromkeys(k for row in rows for k in row)), "the rows")
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

    warnings: list[str] = [note] if note else []
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


def inspect_dataset(
    dataset: Any, settings: ColumnSettings, keyer: GroupKeyer | None = None, dataset_name: str = "the dataset"
) -> dict[str, Any]:
    """`inspect_rows` of a `datasets.Dataset`, reading only the columns it needs (images are never decoded).

    The settings are resolved against its columns first (`resolve_columns`): a column named explicitly and missing
    is an error; a default column it lacks is the report's first warning.
    """
    settings, note = _resolved(settings, dataset.column_names, dataset_name)
    columns = keyer.columns if keyer is not None else settings.keyer().columns
    wanted = [c for c in (settings.domain_column, settings.solution_column, *columns) if c]
    present = [c for c in dict.fromkeys(wanted) if c in dataset.column_names]
    rows = dataset.select_columns(present).to_list()
    if keyer is None:
        report = inspect_rows(rows, settings)
    else:
        keyer.fit(rows, [domain_key(row, settings.domain_column) for row in rows])
        # The table's own counts and no warnings (the report lists bad values), with what `keyer` learnt.
        quiet = settings.keyer()
        quiet.recorded, quiet.imputed = keyer.recorded, keyer.imputed
        report = inspect_rows(rows, settings, quiet)
    if note:
        report["warnings"].insert(0, note)
    return report


def _resolved(
    settings: ColumnSettings, column_names: Sequence[str], dataset_name: str
) -> tuple[ColumnSettings, str | None]:
    """A copy of `settings` resolved against `column_names`, and the note on the default columns they lack."""
    resolved = resolve_columns(column_names, settings, dataset_name)
    return resolved.write_to(dataclasses.replace(settings)), resolved.note(dataset_name)


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
