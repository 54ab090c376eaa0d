"""Launching training on one or many nodes: the resolved-config file and the per-node torchrun.

One code path for every multi-process launch (docs/sweeps.md): the config is composed and
validated once (`resolve`), written to a file (`resolved`), and each node runs one torchrun
whose trainers read that file (`python -m pretrain --resolved-config FILE`) instead of
composing it again (`node`). `launch/slurm_pretrain.sbatch` and the submitit sweep launchers
(`hydra/launcher=submitit_local|submitit_slurm`) both go through it.
"""
