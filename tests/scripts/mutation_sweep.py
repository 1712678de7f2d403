"""Random-mutation sweep: hostile prediction files through the CLI, hostile dataset rows through the data paths.

    python tests/scripts/mutation_sweep.py [--cases N] [--seed S] [--show K]

Each case mutates a valid input at random (a field removed, retyped, emptied or oversized; a line truncated,
duplicated, made non-UTF-8 or not JSON; a BOM, CRLF endings, NaN) and runs it:

* prediction files through ``fair-trl evaluate`` (with and without ``--skip-invalid``) and ``fair-trl compare``;
* dataset rows through what training and the audit do with a row before any model sees it: the group keyer,
  the domain key, the balanced sampler's weights, the audit's column checks and data fingerprint, and the
  accuracy reward.

A case passes when the command returns 0, or returns 2 with a one-line message (the CLI), or raises ValueError
(the library); anything else (a traceback, another exception type) is a finding, printed with its input.
Exits 1 if any case failed. tests/test_hostile_inputs.py runs a bounded, seeded pass of it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import random
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

VALID_LINES = [
    {"id": "0", "prediction": r"\boxed{NV}", "reference": "NV", "dataset": "ham10000", "age": 45, "sex": "F"},
    {"id": "1", "prediction": r"\boxed{MEL}", "reference": "NV", "dataset": "ham10000", "age": 80, "sex": "M"},
    {"id": "2", "prediction": "<answer>MEL</answer>", "reference": "MEL", "dataset": "ham10000", "age": 30,
     "sex": "female"},
    {"id": "3", "prediction": ["Edema"], "reference": "Edema, Pleural Effusion", "dataset": "chexpert", "age": 66,
     "sex": "M"},
    {"id": "4", "prediction": "No Finding", "reference": ["No Finding"], "dataset": "chexpert", "age": "20",
     "sex": "F"},
    {"id": "5", "prediction": "Benign", "reference": "Benign", "dataset": "isic2020", "age": 51, "sex": "male"},
]  # fmt: skip

ODD_VALUES = [
    None, 0, -1, 1.5, float("nan"), float("inf"), True, "", " ", "\x00", "é" * 3, "x" * 5000, [], [1, 2], [None],
    ["NV", 3], {"a": 1}, [[["NV"]]], "NV, , MEL", "\\boxed{", "<answer>", "-5", "1e309", "120", "999", "F M",
]  # fmt: skip


def mutate_value(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(ODD_VALUES))


def mutate_lines(rng: random.Random, lines: list[dict]) -> bytes:
    """A predictions file: `lines` with 1-3 random mutations, as bytes."""
    lines = copy.deepcopy(lines)
    texts: list[bytes] | None = None
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["drop", "retype", "retype", "rename", "duplicate", "truncate", "bytes", "notjson",
                           "bom", "crlf", "blank", "empty", "nonobject"])  # fmt: skip
        row = rng.choice(lines) if lines else {}
        if kind == "drop" and row:
            row.pop(rng.choice(list(row)), None)
        elif kind == "retype" and row:
            row[rng.choice(list(row) + ["age", "sex"])] = mutate_value(rng)
        elif kind == "rename" and row:
            key = rng.choice(list(row))
            row[key.upper()] = row.pop(key)
        elif kind == "duplicate" and row:
            lines.append(copy.deepcopy(row))
        elif kind == "empty":
            lines = []
        elif kind == "nonobject":
            lines.append(rng.choice([[1, 2], "text", 3, None]))
        else:
            texts = texts or [json.dumps(line).encode() for line in lines]
            if not texts:
                continue
            i = rng.randrange(len(texts))
            if kind == "truncate":
                texts[i] = texts[i][: rng.randrange(len(texts[i]) + 1)]
            elif kind == "bytes":
                texts[i] = texts[i][:5] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xFE])]) + texts[i][5:]
            elif kind == "notjson":
                texts[i] = b"{'prediction': 'NV'}"
            elif kind == "bom":
                texts[0] = b"\xef\xbb\xbf" + texts[0]
            elif kind == "crlf":
                texts = [t + b"\r" for t in texts]
            elif kind == "blank":
                texts.insert(i, b"   ")
    if texts is None:
        texts = [json.dumps(line).encode() for line in lines]
    return b"\n".join(texts) + (b"\n" if texts else b"")


def run_cli(argv: list[str]) -> tuple[str, str]:
    """(outcome, detail): "ok", "refused" (rc 2, one line on stderr) or "FAIL" with the traceback or stderr."""
    from fair_trl.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:  # argparse
        return ("refused", err.getvalue().strip()) if exit_.code == 2 else ("FAIL", f"exit {exit_.code}")
    except Exception:
        return "FAIL", traceback.format_exc(limit=-3)
    message = err.getvalue().strip()
    if code == 0:
        return "ok", ""
    if code == 2 and message and "Traceback" not in message:
        return "refused", message.splitlines()[-1]
    return "FAIL", f"rc {code}: {message}"


def prediction_case(rng: random.Random, folder: Path) -> tuple[str, str, str]:
    data = mutate_lines(rng, VALID_LINES)
    path = folder / "pred.jsonl"
    path.write_bytes(data)
    results = [run_cli(["evaluate", str(path), "--attributes", "age", "sex"]),
               run_cli(["evaluate", str(path), "--skip-invalid", "--bootstrap", "5"])]  # fmt: skip
    reference = folder / "a.jsonl"
    reference.write_text("".join(json.dumps(line) + "\n" for line in VALID_LINES))
    results.append(run_cli(["compare", str(reference), str(path), "-o", str(folder / "cmp"), "--bootstrap", "5",
                            "--no-plots", "--overwrite"]))  # fmt: skip
    worst = next((r for r in results if r[0].startswith("FAIL")), results[0])
    return worst[0], worst[1], repr(data[:400])


DATASET_ROW = {"prompt": [{"role": "user", "content": "Normal or Pneumonia?"}], "solution": "Normal",
               "dataset": "site_a", "sex": "F", "age": "47", "w": 1.0}  # fmt: skip


def dataset_case(rng: random.Random, folder: Path, reward: bool = True) -> tuple[str, str, str]:
    """Mutated rows through the keyer, sampler weights, audit checks and fingerprint, and the accuracy reward."""
    from datasets import Dataset

    from fair_trl.audit.fingerprint import data_hash
    from fair_trl.audit.inputs import prepare_rows
    from fair_trl.groups import GroupKeyer, domain_key
    from fair_trl.rewards import accuracy_reward
    from fair_trl.sampling import balanced_weights, column_weights

    rows = [dict(copy.deepcopy(DATASET_ROW), solution=["Normal", "Pneumonia"][i % 2]) for i in range(6)]
    for _ in range(rng.randint(1, 3)):
        # One odd value in some rows, None in the others: a column of one type, as Arrow stores it.
        key, value = rng.choice(list(DATASET_ROW)), mutate_value(rng)
        hit = set(rng.sample(range(len(rows)), rng.randint(1, len(rows))))
        for i, row in enumerate(rows):
            if key in row:
                row[key] = copy.deepcopy(value) if i in hit else None
    if rng.random() < 0.2:
        column = rng.choice(list(DATASET_ROW))
        for row in rows:
            row.pop(column, None)
    described = repr(rows)[:400]
    try:
        try:
            data = Dataset.from_list(rows)
        except Exception as err:  # Arrow refuses some values outright: the datasets library's answer, not ours
            return "arrow refused", type(err).__name__, described
        keyer = GroupKeyer(["sex", "age"])
        table = data.to_list()
        keys = keyer.keys({c: r.get(c) for c in ("sex", "age")} for r in table)
        balanced_weights([domain_key(r, "dataset") for r in table], keys)
        if "w" in data.column_names:
            with contextlib.suppress(ValueError):
                column_weights(data, "w")
        with contextlib.suppress(ValueError):
            audit_rows = prepare_rows(data, "mutated", "test", ("age", "sex"))
            data_hash(audit_rows.dataset, [c for c in data.column_names if c != "w"])
        if reward and "solution" in data.column_names:
            completions = [[{"role": "assistant", "content": rng.choice([r"\boxed{Normal}", "", "Pneumonia"])}]
                           for _ in table]  # fmt: skip
            with contextlib.suppress(ValueError):
                scores = accuracy_reward(completions, solution=[r.get("solution") for r in table],
                                         dataset=[r.get("dataset") for r in table])  # fmt: skip
                bad = [s for s in scores if s is not None and not (isinstance(s, float) and math.isfinite(s))]
                if bad:
                    return "FAIL in accuracy_reward", f"returned {bad}", described
    except ValueError as err:
        return "refused", str(err).splitlines()[0], described
    except Exception:
        where = "FAIL in accuracy_reward" if "rewards.py" in traceback.format_exc() else "FAIL"
        return where, traceback.format_exc(limit=-3), described
    return "ok", "", described


def sweep(cases: int, seed: int, reward: bool = True) -> list[tuple[str, str, str, str]]:
    """(kind, outcome, detail, input) per case; an outcome starting "FAIL" marks a finding.

    `reward`: also score the mutated rows with `accuracy_reward`.
    """
    rng = random.Random(seed)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cases):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            kind = "predictions" if i % 2 == 0 else "dataset rows"
            if kind == "predictions":
                out.append((kind, *prediction_case(rng, folder)))
            else:
                out.append((kind, *dataset_case(rng, folder, reward)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=5, help="findings printed in full")
    parser.add_argument("--no-reward", action="store_true", help="leave accuracy_reward out")
    args = parser.parse_args()
    results = sweep(args.cases, args.seed, reward=not args.no_reward)
    print(Counter((kind, outcome) for kind, outcome, _, _ in results))
    refusals = Counter(detail.split(":")[-1].strip()[:90] for _, outcome, detail, _ in results if outcome == "refused")
    for message, count in refusals.most_common(12):
        print(f"  refused x{count}: ...{message}")
    failures = [r for r in results if r[1].startswith("FAIL")]
    for kind, _, detail, given in failures[: args.show]:
        print(f"--- {kind}: {given}\n{detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
