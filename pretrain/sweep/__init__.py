"""Hydra multirun sweeps (`python -m pretrain -m KEY=a,b ...`), locally and on Slurm.

- `points`: swept keys, point names (`key=value,...`), `point.json` records.
- `plan`: a job's point and its run dir `${sweep.dir}/<point>` (set into the job's config).
- `local`: Hydra's basic launcher (one process, points one after another): skip finished
  points, record each outcome, a failed point does not stop the others.
- `launcher` + `job`: `hydra/launcher=submitit_local|submitit_slurm`: every point composed and
  validated on the submitting host, then one job per point running one torchrun per node.
- `outcome`: the end-of-sweep summary and exit code.
See docs/sweeps.md; `python -m pretrain.sweep_report SWEEP_DIR` tabulates a sweep.
"""
