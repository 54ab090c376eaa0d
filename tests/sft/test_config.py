"""objective.* validation and the loss-mask checks of instruction data (before any process
group starts), plus one plain `python -m pretrain` that must exit 2 with the message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pretrain.config import ConfigError
from pretrain.validate import validate
from tests.pretrain._plain import run_plain
from tests.sft._data import build_instruct_dir, prompt_completion_examples, write_instruct_dir
from tests.sft._inproc import compose, sft_overrides


def _validate(data_dir: Path, tmp_path: Path, *extra: str):
    return validate(compose(sft_overrides(data_dir, tmp_path / "run", *extra)), world_size=1)


def test_sft_on_pretraining_data_exits_2_naming_the_entry(prepared_data, tmp_path):
    result = run_plain(["objective=sft", f"data.paths=[{prepared_data}]"], tmp_path / "run")
    assert result.returncode == 2, result.output[-2000:]
    assert f"data.paths[0]={prepared_data}: objective=sft needs instruction data" in result.output
    assert "Traceback" not in result.stderr


def test_objective_keys_are_checked(instruct_data, prepared_data, tmp_path):
    assert len(_validate(instruct_data, tmp_path)) == 1
    bad = {
        "data.weights=[1.0]": "data.weights=[1.0] is not supported with objective=sft",
        "data.valid_paths=[]": "data.valid_paths=[] is empty",
        f"data.valid_paths=[{prepared_data}]": f"data.valid_paths[0]={prepared_data}: objective",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            _validate(instruct_data, tmp_path, override)
    for override, message in {
        "objective.pack=false": "objective.pack=false applies to objective=sft only",
        f"data.valid_paths=[{instruct_data}]": "needs objective=sft",
    }.items():
        with pytest.raises(ConfigError, match=message):
            _validate(instruct_data, tmp_path, "objective=lm", override)


def _copy(instruct_data: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(instruct_data, target)
    return target


def test_loss_mask_files_are_checked(instruct_data, prepared_data, tmp_path):
    missing = _copy(instruct_data, tmp_path / "a")
    (missing / "shard_00001.loss_mask.bin").unlink()
    with pytest.raises(ConfigError, match=r"data.paths\[0\]: loss-mask file .*shard_00001"):
        _validate(missing, tmp_path)
    # a mask whose documents have other lengths than the tokens (same count, same total)
    examples = prompt_completion_examples(prepared_data, 4, seed=3)
    good = write_instruct_dir(tmp_path / "b", prepared_data, [examples])
    swapped = [(t, m) for (t, _), (_, m) in zip(examples, examples[1:] + examples[:1], strict=True)]
    other = write_instruct_dir(tmp_path / "c", prepared_data, [swapped])
    assert [len(t) for t, _ in examples] != [len(m) for _, m in swapped]
    for ext in (".bin", ".idx"):
        shutil.copyfile(other / f"shard_00000.loss_mask{ext}", good / f"shard_00000.loss_mask{ext}")
    with pytest.raises(ConfigError, match=r"document 0 has \d+ mask values but \d+ tokens"):
        _validate(good, tmp_path)
    # same sizes, other bytes: only data.verify_checksums finds it
    flipped = _copy(instruct_data, tmp_path / "d")
    path = flipped / "shard_00000.loss_mask.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    _validate(flipped, tmp_path)
    with pytest.raises(ConfigError, match="shard_00000.loss_mask.bin fails its manifest sha256"):
        _validate(flipped, tmp_path, "data.verify_checksums=true")
    # the valid_paths entries are checked the same way
    held = build_instruct_dir(tmp_path / "held", prepared_data, counts=(6,), seed=4)
    (held / "shard_00000.loss_mask.idx").unlink()
    with pytest.raises(ConfigError, match=r"data.valid_paths\[0\]: loss-mask file"):
        _validate(instruct_data, tmp_path, f"data.valid_paths=[{held}]")
