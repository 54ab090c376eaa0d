"""`python -m pretrain.plan` end to end (real Hydra composition in a subprocess), the token
budget against real manifests, and the preflight check of training and the launchers.

Cheap: nothing trains; each subprocess only composes, validates and does arithmetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pretrain.config import ConfigError, PretrainConfig
from tests.conftest import REPO_ROOT

# llama-8b without TP or the distributed optimizer: 8B x (2 + 4 + 12) bytes per GPU > 80 GiB
NOT_FITTING = (
    "model=llama-8b",
    "parallel=single",
    "precision=bf16",
    "train=llama",
    "optim=llama",
    "train.global_batch_size=64",
    "model.vocab_size=128256",
    "cluster.num_gpus=8",
    "cluster.gpu=h100",
)


def _compose(overrides: list[str]) -> PretrainConfig:
    from omegaconf import OmegaConf

    from pretrain.launch.resolve import compose_config

    return OmegaConf.to_object(compose_config(overrides))


# `python -m pretrain.plan`, then report on stderr whether megatron got imported
_RUN_AND_REPORT_IMPORTS = """
import runpy, sys
try:
    runpy.run_module("pretrain.plan", run_name="__main__", alter_sys=True)
finally:
    loaded = any(name.split(".")[0] == "megatron" for name in sys.modules)
    print(f"megatron imported: {loaded}", file=sys.stderr)
"""


def _cli(*overrides: str, report_imports: bool = False) -> tuple[int, str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    entry = ["-c", _RUN_AND_REPORT_IMPORTS] if report_imports else ["-m", "pretrain.plan"]
    proc = subprocess.run(
        [sys.executable, *entry, *overrides],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def _tiny(data: Path, *more: str) -> list[str]:
    return ["model=tiny", f"data.paths=[{data}]", "cluster.num_gpus=1", "cluster.gpu=h100", *more]


def test_cli_plan_that_fits(prepared_data: Path) -> None:
    from pretrain.data_checks import check_manifests
    from pretrain.plan.plan import build_plan

    overrides = _tiny(prepared_data, "train.max_tokens=2000000")
    code, out, err = _cli(*overrides)
    assert code == 0, err
    for words in (
        "Parameters",
        "Memory per GPU",
        "FITS",
        "Communication per step",
        "tokens/s",
        "GPU-hours",
        "epochs",
        "Korthikanti et al. 2022",
        "Narayanan et al. 2021",
    ):
        assert words in out
    got = _last_json(out)
    for key in (
        "total_params",
        "params_per_rank",
        "memory_per_gpu_bytes",
        "fits",
        "comm_bytes_per_step",
        "step_time_s",
        "tokens_per_s",
        "epochs",
        "layout",
        "gpu",
    ):
        assert key in got
    cfg = _compose(overrides)
    manifests = check_manifests(cfg.data, cfg.model)
    plan = build_plan(cfg, 1, manifests)
    assert got["fits"] is True and plan.fits
    assert got["total_params"] == plan.params.total
    assert got["memory_per_gpu_bytes"] == plan.memory.parts()
    assert got["comm_bytes_per_step"] == plan.comm.bytes_per_step
    assert got["step_time_s"] == pytest.approx(plan.time.step_time_s)
    assert got["epochs"] == pytest.approx(plan.budget.epochs)
    assert got["vocab_size"] == manifests[0]["tokenizer"]["vocab_size"]
    assert got["layout"]["world"] == 1 and got["gpu"]["name"] == "h100"
    assert any("epochs over" in w for w in got["warnings"])  # 2M tokens > the small dataset


def test_cli_plan_that_does_not_fit_suggests_a_layout() -> None:
    from pretrain.plan.layout import with_layout
    from pretrain.plan.plan import build_plan
    from pretrain.plan.types import Layout

    code, out, err = _cli(*NOT_FITTING, "data.paths=[/nonexistent/data]", report_imports=True)
    assert code == 1, err
    assert "megatron imported: False" in err  # a laptop's planner: no megatron, no GPU
    assert "DOES NOT FIT" in out and "Suggested layout" in out
    got = _last_json(out)
    assert got["fits"] is False and got["epochs"] is None
    total = got["memory_per_gpu_bytes"]["total"]
    assert total > got["gpu_memory_bytes"]
    assert any("not prepared" in w for w in got["warnings"])
    assert got["suggestion"] is not None and got["suggestion_overrides"]
    for override in got["suggestion_overrides"]:
        assert override in out
    # the suggestion, applied as overrides, is predicted to fit
    cfg = _compose([*NOT_FITTING, "data.paths=[/nonexistent/data]"])
    suggested = with_layout(cfg, Layout(**got["suggestion"]))
    assert build_plan(suggested, 8, search=False).fits


@pytest.mark.parametrize(
    "bad",
    [
        ["cluster.gpu=potato"],
        ["parallel.tensor_model_parallel_size=3"],
        ["cluster.nmu_gpus=8"],
    ],
    ids=["unknown-gpu", "bad-layout", "unknown-key"],
)
def test_cli_config_errors_exit_2(bad: list[str]) -> None:
    code, out, err = _cli("model=tiny", "cluster.num_gpus=1", *bad)
    assert code == 2, (out, err)
    assert "config error" in err and "Traceback" not in err


def test_cli_help_lists_cluster_keys_and_gpus() -> None:
    from pretrain.plan.__main__ import plan_help
    from pretrain.plan.hardware import gpu_names

    text = plan_help()
    for key in (
        "num_gpus",
        "gpu",
        "gpus_per_node",
        "intra_node_gbps",
        "inter_node_gbps",
        "mfu",
        "overhead_gib",
        "check",
    ):
        assert f"cluster.{key}=" in text
    assert all(name in text for name in gpu_names())


# --- the token budget against real manifests (in-process) ---


def _budget(data: Path, *more: str) -> Any:
    from pretrain.data_checks import check_manifests
    from pretrain.plan.budget import estimate_budget

    cfg = _compose(["model=tiny", f"data.paths=[{data}]", *more])
    return cfg, estimate_budget(cfg, check_manifests(cfg.data, cfg.model), 10**6)


def test_budget_epochs_follow_tokens_split_and_weights(prepared_data: Path) -> None:
    from pretrain.data_checks import read_manifest

    tokens = read_manifest(prepared_data)["totals"]["num_tokens"]
    cfg, budget = _budget(prepared_data, "train.max_tokens=1000000", "data.split='90,5,5'")
    steps = -(-1_000_000 // (8 * 64))
    assert budget.tokens == steps * 8 * 64
    assert budget.epochs[str(prepared_data)] == pytest.approx(budget.tokens / (0.9 * tokens))
    # the same dir twice, weighted 3:1: three times the epochs over the first entry
    cfg, budget = _budget(
        prepared_data,
        f"data.paths=[{prepared_data},{prepared_data}/.]",
        "data.weights=[3,1]",
    )
    first, second = budget.epochs.values()
    assert first == pytest.approx(3 * second)


def test_budget_warnings(prepared_data: Path) -> None:
    _, quiet = _budget(
        prepared_data,
        "train.global_batch_size=32",
        "train.micro_batch_size=4",
        "train.seq_length=16",
        "optim.warmup_steps=5",
    )
    assert quiet.warnings == []
    _, loud = _budget(
        prepared_data,
        "train.max_tokens=100000000",
        "optim.warmup_steps=100000",
        "model.max_position_embeddings=16384",
        "train.seq_length=16384",  # the stdlib modules: median ~6k tokens
    )
    text = "\n".join(loud.warnings)
    for words in (
        "tiny global batch",
        "epochs over",
        "warmup longer than the run",
        "longer than most documents",
    ):
        assert words in text, text


def test_tiny_token_batch_warns_only_for_big_models(prepared_data: Path) -> None:
    from pretrain.data_checks import check_manifests
    from pretrain.plan.budget import estimate_budget

    cfg = _compose(
        [
            "model=tiny",
            f"data.paths=[{prepared_data}]",
            "train.global_batch_size=64",
            "train.micro_batch_size=8",
            "train.seq_length=16",
        ]
    )
    manifests = check_manifests(cfg.data, cfg.model)
    small = estimate_budget(cfg, manifests, 10**8).warnings
    big = estimate_budget(cfg, manifests, 8 * 10**9).warnings
    assert not any("tiny global batch" in w for w in small)
    assert any("tokens per step" in w for w in big)


# --- preflight: what training and the launchers run before starting ---


def _not_fitting(check: str) -> PretrainConfig:
    return _compose([*NOT_FITTING, "data.paths=[/nonexistent/data]", f"cluster.check={check}"])


def test_preflight_off_warn_error() -> None:
    from pretrain.plan.preflight import preflight

    assert preflight(_not_fitting("off"), 8) == []
    (warning,) = preflight(_not_fitting("warn"), 8)
    assert "GiB per GPU >" in warning and "h100" in warning
    assert "python -m pretrain.plan" in warning and "suggests" in warning
    with pytest.raises(ConfigError, match="GiB per GPU >"):
        preflight(_not_fitting("error"), 8)


def test_preflight_without_a_gpu_type_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on CPU (cluster.gpu=null, no CUDA device): nothing to compare with."""
    from pretrain.plan import hardware
    from pretrain.plan.preflight import preflight

    monkeypatch.setattr(hardware, "detect_gpu", lambda: None)
    cfg = _not_fitting("error")
    cfg.cluster.gpu = None
    assert preflight(cfg, 8) == []


def test_preflight_of_a_fitting_config_is_silent(prepared_data: Path) -> None:
    from pretrain.plan.preflight import preflight

    assert preflight(_compose(_tiny(prepared_data, "cluster.check=error")), 1) == []


def test_training_and_resolve_run_the_preflight(
    prepared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cluster.check=error stops `python -m pretrain` with exit 2 before any process group;
    the Slurm resolve step prints the warning (cluster.check=warn) and goes on."""
    from pretrain.launch.resolve import main as resolve_main

    huge = ["cluster.overhead_gib=1000", f"run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", *_tiny(prepared_data, "cluster.check=error", *huge)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "config error: the plan predicts" in proc.stderr
    assert not (tmp_path / "run").exists()
    code = resolve_main(["--check", "--world-size", "1", *_tiny(prepared_data, *huge)])
    assert code == 0
    assert "pretrain: warning: the plan predicts" in capsys.readouterr().err
