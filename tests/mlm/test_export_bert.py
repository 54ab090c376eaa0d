"""End to end: a TP=2 objective=mlm run -> `python -m pretrain.export_hf` -> transformers.

One real 2-process training run (3 steps, saved at the end) is exported by the CLI in a
subprocess (the loader reshards TP=2 to TP=1). Then, in this process: `AutoModelForMaskedLM`
loads a `MegatronBertForMaskedLM` whose logits equal our BertModel's (TP=1, loaded from the same
checkpoint) to 1e-4 absolute on real text with padding (observed 0.0 on CPU), and the
`fill-mask` pipeline gives top-k predictions with megatron's probabilities.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._dist import REPO_ROOT, run_pretrain, small_gpt_overrides
from tests.sft._inproc import process_group

pytestmark = pytest.mark.distributed

LOGIT_ATOL = 1e-4
TEXTS = ["def main(args):\n    return 0\n", "import os\nprint(os.getcwd())\n", "x = [1, 2]"]


@pytest.fixture(scope="module")
def exported(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(TP=2 run dir, export folder, the CLI's log)."""
    base = tmp_path_factory.mktemp("mlm_export")
    overrides = [
        *small_gpt_overrides(prepared_data, 3),
        "objective=mlm",
        "parallel.tensor_model_parallel_size=2",
        "checkpoint.save_at_end=true",
    ]
    run = run_pretrain(2, overrides, base / "run").run_dir
    out = base / "hf"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.export_hf", f"checkpoint={run}", f"output={out}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, out, proc.stdout + proc.stderr


def test_export_writes_a_megatron_bert_folder(exported) -> None:
    run, out, log = exported
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "export_info.json",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MegatronBertForMaskedLM"]
    assert config["model_type"] == "megatron-bert"
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (
        512,
        64,
        2,
    )
    assert config["type_vocab_size"] == 1 and config["tie_word_embeddings"] is True
    info = json.loads((out / "export_info.json").read_text())
    assert info["family"] == "megatron-bert" and info["step"] == 3
    assert info["layout"]["tensor_model_parallel_size"] == 2
    assert "sample from the exported model: \"fill-mask 'def main(<mask>):'" in log, log[-2000:]


def test_transformers_logits_equal_megatron(exported) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from pretrain.checkpoint.layout import resolve_load_path
    from pretrain.checkpoint.meta import read_meta
    from pretrain.config import ParallelConfig
    from pretrain.hf.bert import load_bert
    from pretrain.mlm.model import build_bert_model

    run, out, _ = exported
    tok = AutoTokenizer.from_pretrained(str(out))
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert int((mask == 0).sum()) > 0  # padding is exercised
    hf = AutoModelForMaskedLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == "MegatronBertForMaskedLM"
    ckpt = resolve_load_path(run)
    with process_group(), torch.no_grad():
        model_cfg, ours = load_bert(ckpt, read_meta(ckpt))
        expected = ours(ids, mask)[0][..., : hf.config.vocab_size].float()
    with process_group(), torch.no_grad():  # seeded as the run was: its initial weights
        fresh = build_bert_model(model_cfg, ParallelConfig(), 512, "fp32")[0].eval()
        untrained = fresh(ids, mask)[0][..., : hf.config.vocab_size].float()
    # the checkpoint's trained weights were loaded (not the seeded initial ones)
    assert float((untrained - expected).abs()[mask.bool()].max()) > 0.05
    with torch.no_grad():
        got = hf(input_ids=ids, attention_mask=mask).logits.float()
    diff = (got - expected).abs()[mask.bool()]
    assert float(diff.max()) < LOGIT_ATOL, float(diff.max())
    assert float(expected.abs().max()) > 0.3  # 3 steps of training: small but not ~0


def test_fill_mask_pipeline_predicts_with_megatrons_probabilities(exported) -> None:
    from transformers import AutoTokenizer

    from pretrain.checkpoint.layout import resolve_load_path
    from pretrain.checkpoint.meta import read_meta
    from pretrain.hf.bert import fill_mask, load_bert

    run, out, _ = exported
    tok = AutoTokenizer.from_pretrained(str(out))
    found = fill_mask(out, "def main(<mask>):", top_k=5)
    assert len(found) == 1 and len(found[0]) == 5
    scores = [p["score"] for p in found[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    for p in found[0]:
        assert p["token_str"] == tok.decode([p["token"]]) and 0 <= p["token"] < 512
        assert p["sequence"].startswith("def main(")
    two = fill_mask(out, "def <mask>(<mask>):", top_k=3)
    assert [len(per_mask) for per_mask in two] == [3, 3]
    # the pipeline's probabilities are megatron's softmax at the mask position
    ids = tok("def main(<mask>):", return_tensors="pt")["input_ids"]
    at = int((ids[0] == tok.mask_token_id).nonzero())
    ckpt = resolve_load_path(run)
    with process_group(), torch.no_grad():
        _, ours = load_bert(ckpt, read_meta(ckpt))
        logits = ours(ids, torch.ones_like(ids))[0][0, at, :512].float()
    probs = torch.softmax(logits, dim=-1)
    for p in found[0]:
        assert abs(p["score"] - float(probs[p["token"]])) < 1e-5, p
    assert found[0][-1]["score"] >= float(torch.topk(probs, 5).values[-1]) - 1e-5


def test_bert_checkpoints_do_not_generate_adapt_or_import(exported) -> None:
    from pretrain.checkpoint.layout import resolve_load_path
    from pretrain.checkpoint.meta import CheckpointError
    from pretrain.config import ConfigError
    from pretrain.hf.export import ExportConfig, export, load_megatron_model, sample

    run, out, _ = exported
    with pytest.raises(CheckpointError, match="objective=mlm .BERT. checkpoint: it does not gen"):
        load_megatron_model(resolve_load_path(run))
    with pytest.raises(CheckpointError, match="masked-LM export .* does not generate text"):
        sample(out, "def ", 4)  # what `python -m pretrain.generate hf=...` runs
    cfg = ExportConfig(
        checkpoint=str(run), output=str(out.with_name("x")), adapter_output=str(out / "a")
    )
    with pytest.raises(ConfigError, match="adapter_output= needs a LoRA checkpoint"):
        export(cfg)
    no_mask = _tokenizer_without_mask(out.parent / "plain")
    cfg = ExportConfig(checkpoint=str(run), output=str(out.with_name("y")), tokenizer=no_mask)
    with pytest.raises(CheckpointError, match=r"no control or user-defined piece '<mask>'"):
        export(cfg)
    from pretrain.hf.importer import import_llama

    with pytest.raises(CheckpointError, match="model_type=megatron-bert; only llama imports"):
        import_llama(out, out.with_name("imported"))  # import_hf takes Llama folders only


def _tokenizer_without_mask(prefix: Path) -> str:
    """A small SentencePiece model trained here without the reserved pieces."""
    import sentencepiece as spm

    from tests.conftest import stdlib_sample_files

    texts = [Path(p).read_text(encoding="utf-8") for p in stdlib_sample_files(40_000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=300, minloglevel=2
    )
    return f"{prefix}.model"
