"""objective=llava refuses, before any process group, what it cannot train (ConfigError, exit 2).

Most cases call `pretrain.validate.validate` in this process (the checks `python -m pretrain`
runs first); two go through a real `python -m pretrain` process for the exit code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pretrain.config import ConfigError
from pretrain.validate import validate
from tests.pretrain._plain import run_plain
from tests.sft._inproc import compose


def _validate(data: Path, *extra: str, world: int = 1) -> None:
    cfg = compose(["objective=llava", f"data.paths=[{data}]", "train.seq_length=32", *extra])
    validate(cfg, world_size=world)


def test_a_good_llava_config_validates(image_text_data, image_text_heldout):
    _validate(image_text_data, f"data.valid_paths=[{image_text_heldout}]")
    _validate(image_text_data, "parallel=tp2", world=2)


CASES = {
    "image size": (["vision.image_size=64"], ["vision.image_size=64", "image_text.image_size"]),
    "patches": (["vision.patch_size=5"], ["vision.image_size=32", "vision.patch_size=5"]),
    "vit heads": (
        ["vision.num_attention_heads=3", "vision.hidden_size=63", "parallel=tp2"],
        ["vision.num_attention_heads=3", "parallel.tensor_model_parallel_size=2"],
    ),
    "positions": (
        ["train.seq_length=250"],
        ["265 positions", "model.max_position_embeddings=256"],
    ),
    "sequence parallel": (
        ["parallel=tp2_sp"],
        ["parallel.sequence_parallel=true", "LLaVAModel needs Transformer Engine"],
    ),
    "lora": (["peft=lora"], ["peft.type=lora is not supported with objective=llava"]),
    "fim": (["data.fim.rate=0.5"], ["data.fim.rate=0.5 needs objective=lm"]),
    "image piece": (["vision.image_token='<nope>'"], ["vision.image_token='<nope>'"]),
    "weights": (["data.weights=[2.0]"], ["data.weights=[2.0] is not supported"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_llava_config_errors(image_text_data, name):
    overrides, texts = CASES[name]
    world = 2 if any("tp2" in o for o in overrides) else 1
    with pytest.raises(ConfigError) as info:
        _validate(image_text_data, *overrides, world=world)
    for text in texts:
        assert text in str(info.value), str(info.value)


def test_text_and_image_dirs_are_kept_apart(image_text_data, prepared_data):
    with pytest.raises(ConfigError, match=r"data.paths\[0\]=.*objective=llava needs image-text"):
        _validate(prepared_data)
    for objective in ("lm", "sft", "mlm"):
        cfg = compose([f"objective={objective}", f"data.paths=[{image_text_data}]"])
        with pytest.raises(ConfigError, match=rf"data.paths\[0\]=.*objective={objective} trains"):
            validate(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"data.valid_paths\[0\]=.*needs image-text"):
        _validate(image_text_data, f"data.valid_paths=[{prepared_data}]")


def test_damaged_shards_are_refused(image_text_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_text_data, copy)
    tar = copy / "shard_00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="shard_00000.tar has .* bytes but its index"):
        _validate(copy)
    tar.write_bytes(data)
    _validate(copy, "data.verify_checksums=true")
    tar.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    with pytest.raises(ConfigError, match="fails its manifest sha256 check"):
        _validate(copy, "data.verify_checksums=true")
    (copy / "shard_00000.idx.npy").unlink()
    with pytest.raises(ConfigError, match="shard_00000.idx.npy is missing"):
        _validate(copy)


def test_python_m_pretrain_exits_2(image_text_data, prepared_data, tmp_path):
    for overrides, text in (
        (["objective=llava", f"data.paths=[{prepared_data}]"], "needs image-text data"),
        (
            ["objective=llava", f"data.paths=[{image_text_data}]", "vision.image_size=64"],
            "image_text.image_size",
        ),
    ):
        run = run_plain(overrides, tmp_path / "run")
        assert run.returncode == 2, run.stderr[-3000:]
        assert text in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert not (tmp_path / "run").exists()
