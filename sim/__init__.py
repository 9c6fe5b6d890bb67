"""sim: controlled synthetic experiments on why RL fine-tuning of language models does what it does.

The house (docs/layout.md): `run` (Hydra) -> `config` (validation) -> `experiment` (one run, its
outputs), over the subpackages `rl` (the loop), `policies`, `tasks`, `reward_models`, `lm` (real
checkpoints), `analysis` (theory and verdicts) and `output` (what a run writes).
"""
