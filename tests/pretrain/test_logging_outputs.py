"""Run outputs across jobs (real `torchrun -m pretrain` runs on the CPU): the whole-model
parameter count in the banner, one metrics row per step across a stop/resume and a crash/replay,
the final evaluation in the last row, W&B offline folders and TensorBoard events.

W&B's `.wandb` files are read with wandb's own protobuf records (`wandb_internal_pb2.Record`),
framed as wandb-core writes them: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
LevelDB-log records (crc32c, length, type; FULL/FIRST/MIDDLE/LAST) in 32 KiB blocks.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from pretrain.config import ModelConfig
from pretrain.metrics import scalar_items
from pretrain.model import count_parameters
from tests._dist import read_metrics, run_pretrain
from tests.conftest import PREPARED_VOCAB_SIZE

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SMALL = ["model.num_layers=2", "train.log_interval=1"]
"""A 2-layer model; a row every step."""

WANDB_BLOCK = 32768
WANDB_HEADER = 7


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of one `run-<id>.wandb` transaction log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", WANDB_HEADER
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def wandb_run(folder: Path) -> dict[str, Any]:
    """run id, start time, {step: history row} and the summary of one offline-run folder."""
    (log_file,) = folder.glob("run-*.wandb")
    out: dict[str, Any] = {"file": log_file.name, "history": {}, "summary": {}}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["start"] = record.run.run_id, record.run.start_time.ToNanoseconds()
        elif kind == "history":
            row = _items(record.history.item)
            assert row["_step"] not in out["history"], f"step {row['_step']} twice in {folder}"
            out["history"][row["_step"]] = row
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
    return out


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_tensorboard_matches(logdir: Path, rows: list[dict[str, Any]]) -> None:
    """Every scalar of every row, once per step, with the row's value (as float32)."""
    scalars = tensorboard_scalars(logdir)
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in scalar_items(row).items():
            expected.setdefault(key, []).append((row["step"], float(np.float32(value))))
    assert {"loss", "lr", "grad_norm", "tokens_per_s_smoothed", "eta_s"} <= expected.keys()
    for tag, points in expected.items():
        assert scalars.get(tag) == points, f"TensorBoard {tag}: {scalars.get(tag)} != {points}"
    extra = set(scalars) - set(expected)
    assert all(tag.startswith("final_") for tag in extra), extra


def _model_config(run_dir: Path) -> ModelConfig:
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return ModelConfig(**OmegaConf.to_container(saved.model))


LLAMA_TINY = [
    "model.normalization=RMSNorm",
    "model.activation=swiglu",
    "model.position_embedding_type=rope",
    "model.add_bias_linear=false",
    "model.share_embeddings_and_output_weights=false",
    "model.num_query_groups=2",
]
"""A llama-style variant of model=tiny: RMSNorm (no bias), SwiGLU, RoPE, GQA, untied output."""


@pytest.mark.parametrize(
    ("nproc", "layout", "tp", "extra"),
    [(1, "single", 1, []), (2, "tp2", 2, []), (2, "pp2", 1, []), (2, "tp2", 2, LLAMA_TINY)],
    ids=["TP=1", "TP=2", "PP=2", "TP=2-llama-style"],
)
def test_banner_counts_the_whole_model_once(prepared_data, tmp_path, nproc, layout, tp, extra):
    run_dir = tmp_path / layout
    overrides = [f"data.paths=[{prepared_data}]", f"parallel={layout}", "train.max_steps=1"]
    run = run_pretrain(nproc, overrides + extra, run_dir)
    found = re.search(r"params (\d+) total \([\d.]+M\), per rank .* \(rank 0: (\d+)\)", run.output)
    assert found, run.output[-3000:]
    model = _model_config(run_dir)
    assert model.share_embeddings_and_output_weights is not bool(extra)
    expected = count_parameters(model, model.padded_vocab_size(PREPARED_VOCAB_SIZE, tp))
    assert int(found[1]) == expected
    if nproc == 1:
        assert int(found[2]) == expected
    else:
        assert int(found[2]) < expected  # rank 0 holds half the layers or half of each matrix


def _folders(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_stop_and_resume_one_row_per_step_one_wandb_run(prepared_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        f"data.paths=[{prepared_data}]",
        *SMALL,
        "train.max_steps=6",
        "eval.interval=4",
        "eval.iters=1",
        "checkpoint.save_at_end=true",
        "logging.wandb.mode=offline",
        "logging.tensorboard=true",
    ]
    run_pretrain(1, [*overrides, "train.stop_at_step=3"], run_dir)
    first = read_metrics(run_dir)
    assert [r["step"] for r in first] == [1, 2, 3]
    assert not any("valid_loss" in r for r in first)  # stopping at step 3 does not evaluate
    assert first[-1]["eta_s"] == 0.0  # ETA counts down to this job's last step
    assert len(_folders(run_dir)) == 1

    run_pretrain(1, overrides, run_dir)
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one row per step
    assert rows[:3] == first
    assert [r["step"] for r in rows if "valid_loss" in r] == [4, 6]  # interval 4, and the end
    assert all("loss" in r for r in rows)
    last = rows[-1]
    assert last["valid_ppl"] == pytest.approx(np.exp(last["valid_loss"]), rel=1e-9)

    # W&B: one offline folder per job (wandb never reuses one), one run id, every step once
    meta = json.loads((run_dir / "iter_0000006" / "meta.json").read_text())
    run_id = meta["train_state"]["wandb_run_id"]
    folders = _folders(run_dir)
    assert len(folders) == 2 and all(f.name.endswith("-" + run_id) for f in folders)
    runs = sorted((wandb_run(f) for f in folders), key=lambda r: r["start"])
    assert {r["run_id"] for r in runs} == {run_id}
    assert {r["file"] for r in runs} == {f"run-{run_id}.wandb"}
    # `wandb sync` uploads the files of one run id in start-time order: steps only increase
    assert [sorted(r["history"]) for r in runs] == [[1, 2, 3], [4, 5, 6]]
    history = runs[0]["history"] | runs[1]["history"]
    for row in rows:
        assert history[row["step"]]["loss"] == row["loss"]
        assert history[row["step"]].get("valid_loss") == row.get("valid_loss")
    summary = runs[1]["summary"]
    assert summary["final_valid_loss"] == last["valid_loss"]
    assert summary["final_valid_ppl"] == last["valid_ppl"]
    assert (summary["final_step"], summary["final_loss"]) == (6, last["loss"])
    assert "final_valid_loss" not in runs[0]["summary"]  # the stopped job has no final values

    # TensorBoard: both jobs append to one directory; the scalars equal metrics.jsonl
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert_tensorboard_matches(run_dir / "tensorboard", rows)
    final = tensorboard_scalars(run_dir / "tensorboard")["final_valid_loss"]
    assert final == [(6, float(np.float32(last["valid_loss"])))]


def test_crash_replay_leaves_one_row_per_step(prepared_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        f"data.paths=[{prepared_data}]",
        *SMALL,
        "train.max_steps=8",
        "checkpoint.save_interval=3",
        "logging.tensorboard=true",
    ]
    # killed in the save of step 6: rows 1-6 written, the last checkpoint is step 3
    crash = run_pretrain(
        1, overrides, run_dir, check=False, env={"PRETRAIN_CKPT_CRASH_AT_SAVE": "6"}
    )
    assert crash.returncode != 0
    assert (run_dir / "latest").read_text().strip() == "iter_0000003"
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]

    resumed = run_pretrain(1, overrides, run_dir)  # replays steps 4-6
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert "kept 3 rows up to step 3" in resumed.output
    assert not list(run_dir.glob("metrics.jsonl.*"))  # the atomic rewrite left no temp file
    assert_tensorboard_matches(run_dir / "tensorboard", rows)  # steps 4-6 once (purged)
