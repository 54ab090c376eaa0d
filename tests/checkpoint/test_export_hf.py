"""`python -m pretrain.export_hf` (any layout -> transformers) and `pretrain.import_hf` back.

The exported model and ours are run on the same random tokens: logits must agree to 1e-5
absolute in fp32 (observed ~2e-7; both compute the same float32 math in a different order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._dist import REPO_ROOT, read_metrics, run_pretrain
from tests.checkpoint._common import LLAMA

LOGIT_ATOL = 1e-5
EXPECTED_FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "tokenizer.json",
    "export_info.json",
}


def _script(name: str, *args: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(name)), *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.distributed
def test_gpt2_export_from_dp2_distributed_optimizer(reference_run: Path, tmp_path: Path) -> None:
    result = _script("_compare_hf.py", reference_run, tmp_path / "gpt2")
    assert result["cls"] == "GPT2LMHeadModel"
    assert result["max_abs_diff"] < LOGIT_ATOL, result
    assert result["scale"] > 1.0  # the logits are not trivially small
    assert result["tokenizer_ids_match"]
    assert set(result["files"]) >= EXPECTED_FILES, result["files"]
    assert result["sample"].startswith("def ")
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (4, 128, 512)
    assert config["activation_function"] == "gelu" and config["tie_word_embeddings"] is True


@pytest.mark.distributed
@pytest.mark.slow
def test_llama_export_from_tp2pp2_and_import_back(
    tp2pp2_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    result = _script("_compare_hf.py", tp2pp2_run / "iter_0000006", tmp_path / "llama")
    assert result["cls"] == "LlamaForCausalLM"
    assert result["max_abs_diff"] < LOGIT_ATOL, result
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["num_attention_heads"] == 4
    assert config["tie_word_embeddings"] is False
    info = json.loads((tmp_path / "llama" / "export_info.json").read_text())
    assert info["layout"]["tensor_model_parallel_size"] == 2 and info["step"] == 6

    # import_hf: back to a checkpoint (bitwise round trip), then continued pretraining from it
    trip = _script("_roundtrip_hf.py", tmp_path / "llama", tmp_path / "trip")
    assert trip["same_keys"] and trip["differ"] == [], trip
    run = run_pretrain(
        1,
        [
            f"data.paths=[{prepared_data}]",
            *LLAMA,
            "train.max_steps=6",
            "train.stop_at_step=1",
            f"checkpoint.load={tmp_path / 'trip' / 'imported'}",
            "checkpoint.weights_only=true",
        ],
        tmp_path / "continued",
    )
    first = [r for r in run.records if "loss" in r][0]
    fresh = [r for r in read_metrics(tp2pp2_run) if "loss" in r][0]
    assert first["step"] == 1 and first["loss"] < fresh["loss"] - 0.2, (first, fresh)


def test_export_refuses_bad_arguments(tmp_path: Path) -> None:
    from pretrain.config import ConfigError
    from pretrain.export_hf import parse_args

    with pytest.raises(ConfigError, match="output=... is required"):
        parse_args([f"checkpoint={tmp_path}"])
    with pytest.raises(ConfigError, match="dtype='fp8'"):
        parse_args(["checkpoint=a", "output=b", "dtype=fp8"])
    with pytest.raises(ConfigError, match="Valid keys"):
        parse_args(["checkpoint=a", "output=b", "nope=1"])


def test_export_output_and_help(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pretrain.config import ConfigError
    from pretrain.export_hf import main
    from pretrain.hf.export import ExportConfig, check_output, export

    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "checkpoint=(required)" in help_text and "Length of that sample." in help_text
    cfg = ExportConfig(checkpoint=str(tmp_path / "nope"), output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"^checkpoint=\S*nope does not exist"):
        export(cfg)
    check_output(tmp_path / "new", overwrite=False)  # missing: fine
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", overwrite=False)  # empty folder: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output(tmp_path / "file", overwrite=True)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty; pass overwrite=true"):
        check_output(user, overwrite=False)
    with pytest.raises(ConfigError, match="holds no earlier export"):
        check_output(user, overwrite=True)  # never deletes unrelated files
    (user / "export_info.json").write_text("{}")
    check_output(user, overwrite=True)


def test_import_refuses_non_model_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pretrain.checkpoint import CheckpointError
    from pretrain.hf.importer import read_hf_config
    from pretrain.import_hf import main

    assert main(["--help"]) == 0
    assert "hf=(required)" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match=r"hf=\S*nope does not exist"):
        read_hf_config(tmp_path / "nope", None)
    with pytest.raises(CheckpointError, match=r"has no config.json"):
        read_hf_config(tmp_path, None)
    (tmp_path / "config.json").write_text("{}")
    from transformers import AutoConfig

    with pytest.raises(CheckpointError, match="not a transformers model folder"):
        read_hf_config(tmp_path, AutoConfig)
