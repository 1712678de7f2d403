"""The demo experiment, built on the library and not part of its core.

Data flows one way; no module here imports one that imports it back:

- `benchmark`: the synthetic benchmark split into pre-training, RL and held-out parts;
- `warmstart`: the cached SFT stage every method of a seed starts from;
- `evaluation`: greedy answers to the held-out set, scored with the suite;
- `reward`: the RL reward (the product's strict `accuracy_reward`, recorded per group);
- `experiment`: the methods, one warm start, one RL run, all runs over worker processes;
- `stats`: seed-level statistics and paired differences;
- `instrument`: the validity gate and the log of instrument trials;
- `noise`: the noise check, GRPO against itself (what pairing by seed removes, and an A/A check);
- `reference`: whether a run reproduces the published reference study;
- `report` and `plots`: report.md, results.json, summary.md and the PNGs;
- `run`: `main`, one whole demo from its settings, and `publish`;
- `command`: `fair-trl demo`'s options, the `--full` preset (the reference study) and `--noise_check`, parsed
  into a call of `run.main`.
"""
