"""A real one-node Slurm cluster on localhost for the launch-script tests (session fixture).

Installs `slurm-wlm munge` with apt-get when `slurmctld` is missing (as root; Debian/Ubuntu),
writes a munge key and a slurm.conf into a temp dir (exported as SLURM_CONF), starts munged,
slurmctld and `slurmd -N localhost`, waits until `sinfo` reports the node idle and stops the
daemons by their PID files at the end. Any failure FAILS the tests with the daemon logs;
`PRETRAIN_SKIP_SLURM_TESTS=1` skips them instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SKIP_ENV = "PRETRAIN_SKIP_SLURM_TESTS"
CTLD_PORT, SLURMD_PORT = 16817, 16818
# cred_expire=10: Slurm holds a requeued job for cred_expire + 1 s (default 120 s).
SLURM_CONF = """\
ClusterName=pretraintest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=defer_batch_start_time=0
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """Paths of the running test cluster."""

    dir: Path
    conf: Path
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}")
        return res

    def logs(self) -> str:
        """The tail of the daemon logs (for assertion messages)."""
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.dir / name
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(out)


def _fail(msg: str) -> None:
    pytest.fail(f"{msg}\n(set {SKIP_ENV}=1 to skip the Slurm tests)", pytrace=False)


def _install_slurm() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _fail("slurmctld/munged are missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"],
    ):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            _fail(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}{res.stderr}")


def _wait(predicate, timeout: float, what: str, cluster: SlurmCluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    _fail(
        f"timed out after {timeout:.0f} s waiting for {what}\n"
        + (cluster.logs() if cluster else "")
    )


def _start(cmd: list[str], env: dict[str, str], cluster: SlurmCluster) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        _fail(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}\n{cluster.logs()}")


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _start_munge(d: Path, cluster: SlurmCluster) -> Path:
    key, socket = d / "munge.key", d / "munge.socket"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    cmd = [
        "munged",
        "--force",
        f"--key-file={key}",
        f"--socket={socket}",
        f"--pid-file={d / 'munged.pid'}",
        f"--log-file={d / 'munged.log'}",
        f"--seed-file={d / 'munged.seed'}",
    ]
    _start(cmd, dict(os.environ), cluster)
    return socket


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A started one-node cluster (node `localhost`, 2 CPUs, partition `debug`)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    _install_slurm()
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o755)
    (d / "state").mkdir()
    (d / "spool").mkdir()
    conf = d / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(d, conf, env)
    saved = os.environ.get("SLURM_CONF")
    try:
        socket = _start_munge(d, cluster)
        conf.write_text(
            SLURM_CONF.format(
                d=d, ctld_port=CTLD_PORT, slurmd_port=SLURMD_PORT, munge_socket=socket
            )
        )
        _start(["slurmctld", "-c"], env, cluster)  # -c: no state from an earlier session
        _wait(
            lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
            30,
            "slurmctld to answer `scontrol ping`",
            cluster,
        )
        _start(["slurmd", "-N", "localhost"], env, cluster)
        _wait(
            lambda: cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle",
            30,
            "node localhost to be idle in `sinfo`",
            cluster,
        )
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _stop(d / name)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
