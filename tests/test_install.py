"""A non-editable install runs every command: build a wheel, install it, use it from elsewhere.

The wheel is built from a copy of the tracked sources and installed (without dependencies)
into a fresh virtual environment whose only view of the installed dependencies is a `.pth`
line pointing at this environment's site-packages, so the editable checkout is invisible:
each command must find its configs inside the installed package. It then prepares a tiny
corpus and trains a few steps from an unrelated working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import site as python_site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, stdlib_sample_files

pytestmark = pytest.mark.slow


def _tracked_copy(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO_ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the built wheel installed (dependencies reused through a .pth line)."""
    work = tmp_path_factory.mktemp("wheel")
    src = _tracked_copy(work / "src")
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(src)],
        check=True,
    )  # fmt: skip
    wheel = next(dist.glob("pretrain_pipeline-*.whl"))
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # this environment's site dirs, whose .pth files (the editable finder) are not processed
    Path(site, "deps.pth").write_text("".join(f"{p}\n" for p in python_site.getsitepackages()))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
         "--target", site, str(wheel)],
        check=True,
    )  # fmt: skip
    return env_dir


def _run(env_dir: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH="")
    return subprocess.run(
        [str(env_dir / "bin" / "python"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_wheel_holds_the_configs_and_imports_from_itself(wheel_env: Path, tmp_path: Path) -> None:
    probe = _run(
        wheel_env, tmp_path, "-c",
        "import json, pretrain, data_pipeline, pretrain_pipeline_conf as c; "
        "print(json.dumps([pretrain.__file__, data_pipeline.__file__, c.__file__]))",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    for path in json.loads(probe.stdout):
        assert str(wheel_env) in path and str(REPO_ROOT) not in path, path
    for module in ("pretrain", "data_pipeline"):
        shown = _run(wheel_env, tmp_path, "-m", module, "--cfg", "job")
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "config directory" not in shown.stderr
    assert "model:" in _run(wheel_env, tmp_path, "-m", "pretrain", "--cfg", "job").stdout
    helped = _run(wheel_env, tmp_path, "-m", "pretrain", "--help")
    assert helped.returncode == 0 and "parallel: " in helped.stdout, helped.stderr
    # the sweep launcher presets are in the wheel, and Hydra's own plugin scan finds the plugin
    launcher = _run(
        wheel_env, tmp_path, "-m", "pretrain", "hydra/launcher=submitit_slurm", "sweep=lr",
        "--cfg", "hydra", "-p", "hydra.launcher._target_",
    )  # fmt: skip
    assert launcher.returncode == 0, launcher.stderr[-2000:]
    assert "PretrainSlurmLauncher" in launcher.stdout
    scan = _run(
        wheel_env, tmp_path, "-c",
        "from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
        "print([c.__name__ for c in Plugins.instance().discover(Launcher)])",
    )  # fmt: skip
    assert "PretrainLocalLauncher" in scan.stdout, scan.stdout + scan.stderr


def test_wheel_prepares_and_trains_from_another_folder(wheel_env: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for path in stdlib_sample_files(400_000):
            handle.write(json.dumps({"text": Path(path).read_text(encoding="utf-8")}) + "\n")
    prepared = _run(
        wheel_env, tmp_path, "-m", "data_pipeline", "input=files", f"input.paths=[{corpus}]",
        "output.dir=data", "tokenizer.vocab_size=400", "workers=1",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert (tmp_path / "data" / "manifest.json").is_file()
    trained = _run(
        wheel_env, tmp_path, "-m", "pretrain", "data.paths=[data]", "train.max_steps=3",
        "logging=off", "sample.max_new_tokens=4", "run.dir=run", "checkpoint.save_at_end=true",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "latest").is_file()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    swept = _run(
        wheel_env, tmp_path, "-m", "pretrain", "-m", "data.paths=[data]", "train.max_steps=2",
        "logging=off", "sample.enabled=false", "optim.lr=1e-3,2e-3",
    )  # fmt: skip
    assert swept.returncode == 0, swept.stderr[-3000:]
    for lr in ("0.001", "0.002"):
        assert (tmp_path / "checkpoints" / "sweep" / f"optim.lr={lr}" / "latest").is_file()
