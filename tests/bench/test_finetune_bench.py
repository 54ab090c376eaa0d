"""bench/finetune.py --smoke: the three modes' rows, and LoRA's trainable parameters and
optimizer state far below full-parameter training's (on the same model and data).

The benchmark runs as a subprocess (as `make bench` runs it); `--build-dir` puts the instruction
dataset it builds in a temporary folder, so the test neither needs nor touches checkpoints/.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench._run import bench_json, run_bench


def test_smoke_reports_lora_against_full_training(tmp_path: Path) -> None:
    data = tmp_path / "instruct"
    proc = run_bench("finetune.py", "--smoke", "--build-dir", str(data), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = bench_json(proc.stdout)
    assert result["bench"] == "finetune" and (data / "manifest.json").is_file()
    rows = {row["mode"]: row for row in result["results"]}
    assert list(rows) == ["full", "sft", "sft_lora"]
    full, sft, lora = rows["full"], rows["sft"], rows["sft_lora"]
    for row in rows.values():
        assert row["model"] == "tiny" and row["tokens_per_step"] == 16 * 256
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0
        assert row["optim_state_mib"] > 0 and row["grad_buffer_mib"] > 0
    assert full["target_tokens_per_s"] is None and full["packing_efficiency"] is None
    for row in (sft, lora):
        assert 0 < row["packing_efficiency"] <= 1
        assert 0 < row["target_tokens_per_s"] < row["tokens_per_s"]
    # full-parameter modes train (and keep Adam moments for) every parameter, LoRA ~3%
    assert sft["trainable_m"] == full["trainable_m"] and sft["params_m"] == full["params_m"]
    assert abs(full["trainable_m"] - full["params_m"]) < 0.01
    assert full["params_m"] < lora["params_m"] < 1.1 * full["params_m"]  # + the adapters
    assert lora["trainable_m"] < full["trainable_m"] / 10
    assert lora["optim_state_mib"] < full["optim_state_mib"] / 10
    assert lora["grad_buffer_mib"] < full["grad_buffer_mib"] / 10
    # Adam in fp32: two moments per trainable parameter (+ a step counter each)
    assert abs(full["optim_state_mib"] - 8 * full["trainable_m"] * 1e6 / 2**20) < 1.0
