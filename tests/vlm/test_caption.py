"""`python -m pretrain.caption IMAGE ... checkpoint=...`: the arguments, the errors (exit 2 with
a line naming the argument) and, on a trained objective=llava checkpoint, one caption per image
that is the end-of-run sampler's caption of the same pixels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain import caption
from pretrain.checkpoint import layout, meta
from pretrain.config import PretrainConfig
from pretrain.state import TrainState


def _fake_checkpoint(root: Path, objective: str) -> Path:
    """A complete-looking checkpoint dir (markers + meta.json, no tensors) of `objective`."""
    cfg = PretrainConfig()
    cfg.objective.name = objective
    ckpt = root / objective / layout.iter_dir_name(5)
    ckpt.mkdir(parents=True)
    record = meta.build_meta(
        cfg,
        train_state=TrainState(step=5),
        layout=dict(meta.SINGLE_PROCESS_LAYOUT),
        tokenizer={},
        data=[],
        vocab_size=512,
    )
    meta.write_meta(ckpt, record)
    (ckpt / layout.MCORE_META_FILE).write_text(json.dumps({"sharded_backend": "torch_dist"}))
    layout.write_latest(ckpt.parent, ckpt.name)
    return ckpt


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def _run(argv: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pretrain"):
        code = caption.main(argv)
    return code, "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_help_lists_the_usage_and_every_key(capsys: pytest.CaptureFixture) -> None:
    assert caption.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "IMAGE [IMAGE ...] checkpoint=PATH" in text
    for key in ("checkpoint=", "max_new_tokens=32", "tokenizer="):
        assert key in text


def test_split_args_keeps_images_and_options_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "a=b.png")  # an existing file whose name has `=` is an image
    images, options = caption.split_args(
        ["x.png", "a=b.png", "checkpoint=ck", "max_new_tokens=4", "dir/y.jpg"]
    )
    assert images == ["x.png", "a=b.png", "dir/y.jpg"]
    assert options == ["checkpoint=ck", "max_new_tokens=4"]


def test_errors_name_the_argument(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _png(tmp_path / "good.png")
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    cut = _png(tmp_path / "cut.png")
    cut.write_bytes(cut.read_bytes()[:300])  # the header reads, the pixel data is cut
    lm = _fake_checkpoint(tmp_path, "lm")
    mlm = _fake_checkpoint(tmp_path, "mlm")
    cases = [
        ([str(good)], "checkpoint=PATH is required"),
        ([f"checkpoint={lm}"], "give at least one IMAGE"),
        ([str(tmp_path / "nope.png"), f"checkpoint={lm}"], "image " + str(tmp_path / "nope.png")),
        ([str(notes), f"checkpoint={lm}"], f"image {notes}: not a readable image"),
        ([str(good), str(cut), f"checkpoint={lm}"], f"image {cut}: not a readable image"),
        ([str(good), f"checkpoint={tmp_path / 'none'}"], "checkpoint=" + str(tmp_path / "none")),
        ([str(good), f"checkpoint={lm.parent}"], "is an objective=lm checkpoint"),
        ([str(good), f"checkpoint={mlm}"], "is an objective=mlm checkpoint"),
        ([str(good), f"checkpoint={lm}", "max_new_tokens=0"], "max_new_tokens=0 must be >= 1"),
        ([str(good), f"checkpoint={lm}", "max_new_token=3"], "unknown key 'max_new_token'"),
    ]
    for argv, expected in cases:
        code, message = _run(argv, caplog)
        assert code == 2, (argv, message)
        assert expected in message, (argv, message)


@pytest.fixture(scope="module")
def tp2_run(image_text_data: Path, image_text_heldout: Path, tmp_path_factory) -> Path:
    """A short TP=2 llava run whose end-of-run sample captions held-out images."""
    from tests._dist import run_pretrain

    run = tmp_path_factory.mktemp("caption") / "run"
    run_pretrain(
        2,
        [
            "objective=llava",
            "parallel=tp2",
            f"data.paths=[{image_text_data}]",
            f"data.valid_paths=[{image_text_heldout}]",
            "train.max_steps=12",
            "train.micro_batch_size=8",
            "train.global_batch_size=16",
            "train.seq_length=24",
            "optim.warmup_steps=2",
            "sample.enabled=true",
            "sample.max_new_tokens=10",
            "checkpoint.save_at_end=true",
        ],
        run,
    )
    return run


def test_caption_equals_the_end_of_run_sample(
    tp2_run: Path, image_text_heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The CLI (TP1, from a TP=2 checkpoint) captions held-out image 0 as the TP=2 run's own
    sampler did; a resized copy of another size and mode is accepted too."""
    import tarfile

    with tarfile.open(image_text_heldout / "shard_00000.tar") as tar:
        png = tmp_path / "scene.png"
        png.write_bytes(tar.extractfile("000000000.png").read())
    odd = tmp_path / "scene_50x37.jpg"
    with Image.open(png) as img:
        img.resize((50, 37)).save(odd)
    first = (tp2_run / "sample.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("image 000000000: ")
    expected = first[len("image 000000000: ") :].split("  (reference: ")[0]
    assert expected, first  # the model writes something after 12 steps

    code = caption.main([str(png), str(odd), f"checkpoint={tp2_run}", "max_new_tokens=10"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{png}\t{expected}"
    assert lines[1].startswith(f"{odd}\t") and len(lines) == 2


def test_greedy_caption_tokens_are_the_training_losses_argmax() -> None:
    """Each caption token the sampler picks is the most likely one at the position where
    training puts its label (megatron's label shift: the per-token loss of the model's own
    training path is the minimum possible there), so the sampler reads the right position."""
    import torch

    from pretrain.parallel import init_distributed, teardown
    from pretrain.vlm.dataset import SampleLayout, text_tensors
    from pretrain.vlm.model import build_llava_model, image_seq_len
    from pretrain.vlm.sample import caption_ids
    from tests.sft._inproc import compose

    cfg = compose(["objective=llava", "train.seq_length=16", "model.init_method_std=0.2"])
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dist = init_distributed(cfg.parallel, seed=1234)
    try:
        (model,) = build_llava_model(cfg, 512, image_token_id=9)
        model.eval()
        new = caption_ids(
            [model], image, image_token_id=9, dist=dist, seq_length=16, vocab_size=512,
            eod=2, max_new_tokens=6,
        )  # fmt: skip
        assert len(new) >= 3, new
        batch = text_tensors(new, SampleLayout(seq_length=16, image_token=9, eod=2, pad=3))
        args = (image[None], batch["tokens"][None], batch["position_ids"][None], None)
        with torch.no_grad():
            losses, _ = model(
                *args, labels=batch["labels"][None], loss_mask=batch["loss_mask"][None]
            )
            logits, _ = model(*args)
    finally:
        teardown()
    n = image_seq_len(cfg.vision)
    for m, token in enumerate(new):
        log_probs = torch.log_softmax(logits[0, n - 1 + m, :512].float(), dim=-1)
        assert int(log_probs.argmax()) == token
        assert abs(float(losses[0, n - 1 + m]) + float(log_probs.max())) < 1e-4
