"""The demo experiment, built on the library and not part of its core.

- `experiment`: the methods, one training run, all runs over worker processes;
- `reward`: the demo's reward;
- `stats`: seed-level statistics and paired differences;
- `report` and `plots`: report.md, results.json and the PNGs;
- `run`: `main`, what `fair-trl demo` calls.
"""
