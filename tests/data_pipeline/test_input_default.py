"""`input.paths=[...]` alone reads those paths as `input=files`; the embedded corpus is the default
only when no input is given (data_pipeline.config.input_for_overrides)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from dp_helpers import REPO, run_cli, write_jsonl
from omegaconf import OmegaConf

from data_pipeline.config import (
    InputConfig,
    PrepareConfig,
    input_for_overrides,
    override_keys,
    register_configs,
    validate,
)
from data_pipeline.errors import ConfigError

STDLIB = InputConfig(
    name="stdlib_code",
    paths=["stdlib:"],
    format="text",
    include=["*.py"],
    exclude=["site-packages/*", "dist-packages/*"],
)


def _with_paths(inp: InputConfig, paths: list[str], **explicit) -> InputConfig:
    """`inp` as Hydra composes it after `input.paths=...` and the other given keys."""
    return InputConfig(**{**asdict(inp), "paths": paths, **explicit})


def _compose(overrides: list[str]) -> PrepareConfig:
    """conf/prepare.yaml + overrides, composed by Hydra and converted to dataclasses."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("prepare", overrides=overrides))
    assert isinstance(cfg, PrepareConfig)
    return cfg


def test_override_keys():
    overrides = ["input.paths=[a,b]", "+input.x=1", "++y=2", "~input.z", "input@p=files"]
    assert override_keys(overrides) == {"input.paths", "input.x", "y", "input.z", "input"}


def test_paths_alone_select_the_files_preset():
    given = _with_paths(STDLIB, ["corpus.jsonl"])
    assert input_for_overrides(given, ["input.paths=[corpus.jsonl]", "workers=4"]) == InputConfig(
        paths=["corpus.jsonl"]
    )


def test_explicit_input_keys_win():
    given = _with_paths(STDLIB, ["docs/"], format="text", include=["*.md"])
    overrides = ["input.paths=[docs/]", "input.format=text", "+input.include=[*.md]"]
    result = input_for_overrides(given, overrides)
    assert result == InputConfig(paths=["docs/"], format="text", include=["*.md"])
    assert result.exclude == [] and result.name == "custom"


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the embedded corpus
        ["input.include=[json/*.py]"],  # a subset of it
        ["input=stdlib_code", "input.paths=[x.jsonl]"],  # an explicit choice is kept (refused)
        ["input=hf", "input.paths=[x]"],
        ["input=files", "input.paths=[x]"],
    ],
)
def test_unchanged_without_paths_or_with_a_choice(overrides):
    given = _with_paths(STDLIB, ["x.jsonl"])
    assert input_for_overrides(given, overrides) is given


def test_explicit_stdlib_choice_with_paths_is_refused():
    with pytest.raises(ConfigError, match="drop `input=stdlib_code`"):
        validate(PrepareConfig(input=_with_paths(STDLIB, ["x.jsonl"])))


def test_same_as_input_files_through_hydra():
    paths = ["input.paths=[a.jsonl,b.txt]", "input.text_unit=line"]
    implied = _compose(paths)
    assert implied.input.name == "stdlib_code"  # what Hydra composes before the switch
    switched = input_for_overrides(implied.input, paths)
    assert switched == _compose(["input=files", *paths]).input
    assert switched.text_unit == "line" and switched.include == ["*"]
    assert _compose([]).input == STDLIB  # no input given: still the embedded corpus


def test_cli_prepares_the_given_corpus(tmp_path, texts):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts[:12])
    out = tmp_path / "out"
    proc = run_cli(
        "data_pipeline",
        f"input.paths=[{corpus}]",
        f"output.dir={out}",
        "tokenizer.vocab_size=400",
        "tokenizer.sample_bytes=100000",
        "workers=1",
        "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["input"] == {**asdict(InputConfig()), "paths": [str(corpus)]}
    assert [i["path"] for i in manifest["inputs"]] == [str(corpus)]
    assert manifest["totals"]["num_docs"] == 12


def test_cli_refuses_paths_with_an_explicit_stdlib_choice(tmp_path, corpus_jsonl):
    proc = run_cli(
        "data_pipeline",
        "input=stdlib_code",
        f"input.paths=[{corpus_jsonl}]",
        f"output.dir={tmp_path}/o",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "drop `input=stdlib_code`" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_default_output_dir_is_under_the_working_directory(tmp_path, monkeypatch) -> None:
    """Never next to the installed package (a wheel would write into site-packages)."""
    from data_pipeline.config import PrepareConfig

    monkeypatch.chdir(tmp_path)
    assert PrepareConfig().output_dir() == tmp_path / "checkpoints" / "data" / "custom"
