"""`workers` above the usable CPUs (or the work there is) is capped, with a warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import psutil
from dp_helpers import REPO

from data_pipeline.shard import usable_cpus, worker_count


def test_worker_count_caps_and_says_why(caplog):
    caplog.set_level(logging.INFO, "data_pipeline.shard")
    assert worker_count(1000, 2, 50) == 2
    assert "workers=1000 asked, using 2: this job may use 2 CPUs" in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING
    assert worker_count(8, 16, 3) == 3
    assert "workers=8 asked, using 3: the largest shard to build makes about 3" in caplog.text
    assert caplog.records[-1].levelno == logging.INFO
    caplog.clear()
    assert worker_count(2, 2, 5) == 2 and caplog.text == ""
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_cli_workers_far_above_the_cpus(tmp_path, corpus_jsonl, sp_model):
    asked = 100
    args = [
        sys.executable,
        "-m",
        "data_pipeline",
        f"input.paths=[{corpus_jsonl}]",
        f"tokenizer.model={sp_model}",
        f"output.dir={tmp_path / 'out'}",
        f"workers={asked}",
        "batch_bytes=16384",  # ~20 tasks: the CPUs are the limit
        "progress=false",
    ]
    log = tmp_path / "err.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    job, most = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            most = max(most, len(job.children(recursive=True)))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert proc.wait() == 0, log.read_text()
    cpus = usable_cpus()
    assert f"workers={asked} asked, using {cpus}: this job may use {cpus} CPUs" in log.read_text()
    assert most <= cpus
