"""Honest samples: the end-of-run sampler and `python -m pretrain.generate` vs transformers.

Greedy continuations (fp32) of our megatron sampler must be the very token ids that
transformers' greedy `generate` gives for the exported model and the same prompt ids: at TP1
(a 1-process GPT-2-style run) and at PP2 (a real 2-process gloo run, Llama-style), and the CLI
on the checkpoint (resharded to TP1) and on the export must print the same text.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.sample import continuation
from tests._dist import REPO_ROOT, RunResult, run_pretrain
from tests.checkpoint._common import LLAMA

NEW_TOKENS = 16
DEFAULT_PROMPT = "def main(args):\n"
CODE_PROMPT = "    def read(self, size=-1):\n        data = self.raw.read(size)\n"
"""Leading spaces and indentation (the exported tokenizer used to drop the first space)."""
IDS_LINE = re.compile(r"sample token ids: prompt (\[[^\]]*\]) \+ new (\[[^\]]*\])")

WIDE_INIT = "model.init_method_std=0.5"
"""With 2 training steps: every next-token argmax depends on the whole context, so
a sampler reading the wrong position or prompt is seen (a briefly trained tiny model repeats one
token whatever the context)."""

RUNS = {
    "gpt2_tp1": (1, []),
    "llama_pp2": (2, ["parallel.pipeline_model_parallel_size=2", *LLAMA]),
}
"""name -> (processes, overrides) of the two sampled training runs."""


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))


def _tool(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module", params=list(RUNS))
def sampled_run(
    request, prepared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, Path]:
    """A short run that ends with a greedy sample and a checkpoint; and its HF export."""
    nproc, extra = RUNS[request.param]
    run_dir = tmp_path_factory.mktemp(request.param)
    overrides = [
        f"data.paths=[{prepared_data}]",
        "train.max_steps=2",
        WIDE_INIT,
        "checkpoint.save_at_end=true",
        "sample.enabled=true",
        "sample.temperature=0",
        f"sample.max_new_tokens={NEW_TOKENS}",
        *extra,
    ]
    run = run_pretrain(nproc, overrides, run_dir)
    export = run_dir / "hf"
    _tool("pretrain.export_hf", f"checkpoint={run_dir}", f"output={export}", "sample_prompt=null")
    return run, export


def _hf_greedy(folder: Path, prompt_ids: list[int], n: int = NEW_TOKENS) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    return out[0, len(prompt_ids) :].tolist()


def _sp(folder: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


@pytest.mark.distributed
def test_end_of_run_greedy_sample_equals_transformers(sampled_run) -> None:
    run, export = sampled_run
    found = IDS_LINE.search(run.output)
    assert found, run.output[-3000:]
    prompt_ids, new = (ast.literal_eval(g) for g in found.groups())
    sp = _sp(export)
    assert prompt_ids == sp.encode(DEFAULT_PROMPT)  # the data's encoding: no BOS in front
    assert sp.bos_id() not in prompt_ids
    assert len(new) == NEW_TOKENS and len(set(new)) >= 2, new  # a telling continuation
    assert new == _hf_greedy(export, prompt_ids)
    # sample.txt = the prompt + the new tokens decoded in context
    text = (run.run_dir / "sample.txt").read_text(encoding="utf-8")
    assert text == DEFAULT_PROMPT + continuation(sp.decode, prompt_ids, new) + "\n"


def _logged_ids(stderr: str) -> tuple[list[int], list[int]]:
    found = re.search(r"token ids: prompt (\[[^\]]*\]) \+ new (\[[^\]]*\])", stderr)
    assert found, stderr[-3000:]
    return ast.literal_eval(found.group(1)), ast.literal_eval(found.group(2))


@pytest.mark.distributed
def test_generate_cli_prints_transformers_greedy_text(sampled_run, tmp_path: Path) -> None:
    """Checkpoint (any layout -> TP1) and export: transformers' greedy ids, the prompt verbatim.

    The texts are compared through each side's decoder: for byte tokens that are not valid UTF-8
    transformers writes U+FFFD per byte where SentencePiece keeps the valid bytes (this barely
    trained model emits such runs), see `pretrain.hf.tokenizer.write_tokenizer`.
    """
    run, export = sampled_run
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export))
    sp = _sp(export)
    prompt_ids = tok(CODE_PROMPT)["input_ids"]
    assert prompt_ids == sp.encode(CODE_PROMPT)
    want = _hf_greedy(export, prompt_ids)
    prompt_file = tmp_path / "prompt.py"
    prompt_file.write_text(CODE_PROMPT, encoding="utf-8")
    common = ["temperature=0", f"max_new_tokens={NEW_TOKENS}"]
    latest = f"checkpoint={run.run_dir}/latest"
    ours = _tool("pretrain.generate", latest, f"prompt={CODE_PROMPT}", *common)
    assert _logged_ids(ours.stderr) == (prompt_ids, want)
    assert ours.stdout == CODE_PROMPT + continuation(sp.decode, prompt_ids, want) + "\n"
    theirs = _tool("pretrain.generate", f"hf={export}", f"prompt_file={prompt_file}", *common)
    assert _logged_ids(theirs.stderr) == (prompt_ids, want)
    expected = tok.decode(prompt_ids + want, skip_special_tokens=True)
    assert expected.startswith(CODE_PROMPT)
    assert theirs.stdout == expected + "\n"


def test_generate_help_lists_every_key(capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    from pretrain.generate import GenerateConfig, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(GenerateConfig):
        assert f"  {f.name}=" in out, f.name
    assert "Prompt text, taken verbatim" in out and "Seed of the sampling." in out


def test_generate_config_errors_name_the_key(tmp_path: Path) -> None:
    from pretrain.config import ConfigError
    from pretrain.generate import parse_args

    (tmp_path / "p.txt").write_text("x")
    cases = {
        "give checkpoint=PATH or hf=DIR \\(neither": [],
        "give checkpoint=PATH or hf=DIR \\(both": ["checkpoint=a", "hf=b"],
        "prompt=... or prompt_file=..., not both": [
            "checkpoint=a",
            "prompt=x",
            f"prompt_file={tmp_path}/p.txt",
        ],
        "prompt_file=\\S*nope does not exist": ["checkpoint=a", f"prompt_file={tmp_path}/nope"],
        "unknown key 'promt'; did you mean prompt\\?": ["checkpoint=a", "promt=x"],
        "top_k=-1 must be >= 0": ["checkpoint=a", "top_k=-1"],
        "hf=\\S* is not a Hugging Face folder": [f"hf={tmp_path}"],
        "tokenizer=\\S*nope.model does not exist": [
            "checkpoint=a",
            f"tokenizer={tmp_path}/nope.model",
        ],
        "tokenizer=... is for checkpoint": [f"hf={tmp_path}", "tokenizer=x"],
    }
    for message, argv in cases.items():
        with pytest.raises(ConfigError, match=message):
            parse_args(argv)


def test_generate_cli_exits_2_with_one_line(tmp_path: Path, caplog) -> None:
    missing = _tool("pretrain.generate", f"checkpoint={tmp_path}/nope", check=False)
    assert missing.returncode == 2 and missing.stdout == ""
    assert f"checkpoint={tmp_path}/nope does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    from pretrain.generate import main

    assert main(["checkpoint=x", "max_new_token=3"]) == 2
    assert "unknown key 'max_new_token'; did you mean max_new_tokens?" in caplog.text


def test_prompt_values_are_taken_verbatim() -> None:
    """`key=value` values are YAML for other keys; a prompt must stay byte for byte."""
    from pretrain.generate import parse_args, read_prompt

    for prompt in ["def f(a):\n    # x: 1\n", "  [1, 2]", "${x}", "a=b", "true", "1e3", ""]:
        assert parse_args(["checkpoint=c", f"prompt={prompt}"]).prompt == prompt
    assert read_prompt(parse_args(["checkpoint=c"])) == DEFAULT_PROMPT
    assert read_prompt(parse_args(["checkpoint=c", "prompt=null"])) == DEFAULT_PROMPT
    from pretrain.export_hf import parse_args as export_args

    kept = export_args(["checkpoint=a", "output=b", "sample_prompt=def f(a):\n    # x"])
    assert kept.sample_prompt == "def f(a):\n    # x"
    assert export_args(["checkpoint=a", "output=b", "sample_prompt=null"]).sample_prompt is None


def test_continuation_decodes_in_context(prepared_data: Path) -> None:
    """prompt + continuation == the decoded whole, at every split (spaces, multi-byte chars)."""
    from pretrain.sample import encode_prompt

    sp = _sp(prepared_data)
    text = "def f(a):\n    return a  # ünï ✓\n"
    ids = encode_prompt(sp, text)
    cuts = [k for k in range(1, len(ids)) if text.startswith(sp.decode(ids[:k]))]
    assert len(cuts) > 10  # (a text prompt never ends inside a character's byte tokens)
    naive_wrong = 0
    for cut in cuts:
        prompt = sp.decode(ids[:cut])
        assert prompt + continuation(sp.decode, ids[:cut], ids[cut:]) == text, cut
        naive_wrong += prompt + sp.decode(ids[cut:]) != text
    assert naive_wrong > 0  # decoding the new ids alone loses the space at some seams


def test_token_picker_greedy_top_k_and_seed() -> None:
    from pretrain.config import SampleConfig
    from pretrain.sample import TokenPicker

    logits = torch.tensor([0.0, 3.0, 2.9, 1.0, 50.0])  # the last row is TP padding
    greedy = TokenPicker(SampleConfig(temperature=0), vocab_size=4, seed=0)
    assert greedy(logits) == 1
    top1 = TokenPicker(SampleConfig(temperature=5.0, top_k=1), vocab_size=4, seed=0)
    assert {top1(logits) for _ in range(20)} == {1}
    top2 = TokenPicker(SampleConfig(temperature=5.0, top_k=2), vocab_size=4, seed=0)
    draws = [top2(logits) for _ in range(200)]
    assert set(draws) == {1, 2}
    again = TokenPicker(SampleConfig(temperature=5.0, top_k=2), vocab_size=4, seed=0)
    assert [again(logits) for _ in range(200)] == draws
    every = TokenPicker(SampleConfig(temperature=100.0, top_k=0), vocab_size=4, seed=1)
    assert {every(logits) for _ in range(400)} == {0, 1, 2, 3}
