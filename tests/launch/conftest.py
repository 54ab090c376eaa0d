"""A real two-node Slurm cluster on this host for the launch-script tests (session fixture).

Installs `slurm-wlm munge` with apt-get when `slurmctld` is missing (as root; Debian/Ubuntu),
writes a munge key and a slurm.conf into a temp dir (exported as SLURM_CONF), starts munged,
slurmctld and one slurmd per node (`slurmd -N n1`, `slurmd -N n2`: both on 127.0.0.1, each on
its own port, 2 CPUs each, partition `debug`), waits until `sinfo` reports both nodes idle and
stops the daemons by their PID files at the end. Any failure FAILS the tests with the daemon
logs; `PRETRAIN_SKIP_SLURM_TESTS=1` skips them instead.

Job scripts resolve node names (launch/slurm_pretrain.sbatch rendezvouses on the first node of
SLURM_JOB_NODELIST), as on a real cluster, so n1 and n2 must resolve to 127.0.0.1 inside jobs:
where they don't, each slurmd runs in a private mount namespace whose /etc/hosts (a bind mount of
a copy with `127.0.0.1 n1 n2` added) its jobs inherit; where mount namespaces are not allowed
(a container without CAP_SYS_ADMIN) that line is appended to /etc/hosts itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._dist import REPO_ROOT

SKIP_ENV = "PRETRAIN_SKIP_SLURM_TESTS"
NODES = ("n1", "n2")
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
    | {"DEADLINE", "PREEMPTED"}
)
"""`JobState`s a job does not leave (a requeued job passes through REQUEUED/PENDING instead)."""

# cred_expire=10: Slurm holds a requeued job for cred_expire + 1 s (default 120 s).
# %n in the Slurmd* paths is the node name, so the two slurmds on this host keep apart.
SLURM_CONF = """\
ClusterName=pretraintest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
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
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
NodeName=n1 NodeAddr=127.0.0.1 Port={n1_port} CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port={n2_port} CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """The running test cluster: its temp dir, slurm.conf, client environment and node names."""

    dir: Path
    conf: Path
    env: dict[str, str]
    nodes: tuple[str, ...] = NODES

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}")
        return res

    def logs(self) -> str:
        """The tail of the daemon logs (for assertion messages)."""
        out = []
        names = ["slurmctld.log", *(f"slurmd-{node}.log" for node in self.nodes), "munged.log"]
        for name in names:
            path = self.dir / name
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(out)

    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> str:
        """Submit `sbatch --parsable ARGS` (options, script, script arguments); return the job id.

        `env` is added to the cluster's environment; `cwd` becomes the job's SLURM_SUBMIT_DIR.
        """
        cmd = ["sbatch", "--parsable", *args]
        res = subprocess.run(
            cmd,
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}")
        return res.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """The job's `scontrol show job` record ({} once Slurm has forgotten it, MinJobAge)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, timeout: float, output: Path | None = None) -> dict[str, str]:
        """Wait until the job is in a final state and return its record (JobState, ExitCode,
        Restarts, NodeList, ...). After `timeout` s it cancels the job and raises AssertionError
        with the record, the tail of the job's `output` file and the daemon logs.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("JobState") in FINAL_STATES:
                return job
            if not job or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.run("scancel", job_id, check=False)
        why = "Slurm has no record of it" if not job else f"timed out after {timeout:.0f} s"
        text = output.read_text()[-4000:] if output and output.exists() else "(no output file)"
        raise AssertionError(f"job {job_id} did not finish: {why}\n{job}\n{text}\n{self.logs()}")


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


def _free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports (so that concurrent test sessions get clusters of their own)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(*pid_files: Path) -> None:
    """SIGTERM the daemons of `pid_files` together (each takes ~2 s to exit), SIGKILL after 15 s."""
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):  # no pid file, or no such process
            continue
        pids.append(pid)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in filter(_alive, pids):
        with contextlib.suppress(ProcessLookupError):  # exited since
            os.kill(pid, signal.SIGKILL)


def _start_munge(d: Path, cluster: SlurmCluster) -> Path:
    key, socket_path = d / "munge.key", d / "munge.socket"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    cmd = [
        "munged",
        "--force",
        f"--key-file={key}",
        f"--socket={socket_path}",
        f"--pid-file={d / 'munged.pid'}",
        f"--log-file={d / 'munged.log'}",
        f"--seed-file={d / 'munged.seed'}",
    ]
    _start(cmd, dict(os.environ), cluster)
    return socket_path


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


def _private_hosts_cmd(hosts: Path, *cmd: str) -> list[str]:
    """`cmd` in a new mount namespace where `hosts` is bind-mounted over /etc/hosts."""
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts), *cmd]


def _resolve_node_names(d: Path, nodes: tuple[str, ...]) -> Path | None:
    """Make `nodes` resolve to 127.0.0.1 for the jobs; return the hosts file slurmd must see.

    None: the names resolve already, or /etc/hosts was appended to (no mount namespaces here).
    """
    if all(_resolves_to_loopback(node) for node in nodes):
        return None
    line = f"127.0.0.1 {' '.join(nodes)}  # pretrain-pipeline Slurm test nodes\n"
    system = Path("/etc/hosts").read_text()
    hosts = d / "hosts"
    hosts.write_text(system + ("" if system.endswith("\n") else "\n") + line)
    probe = subprocess.run(
        _private_hosts_cmd(hosts, "true"), capture_output=True, text=True, timeout=30
    )
    if probe.returncode == 0:
        return hosts
    try:
        with open("/etc/hosts", "a") as f:
            f.write(("" if system.endswith("\n") else "\n") + line)
    except OSError as e:
        _fail(
            f"node names {nodes} do not resolve, no mount namespace ({probe.stderr.strip()}) "
            f"and /etc/hosts is not writable ({e}): add `{line.strip()}` to /etc/hosts"
        )
    return None


def _node_states(cluster: SlurmCluster) -> dict[str, str]:
    out = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


def _start_cluster(d: Path, cluster: SlurmCluster) -> None:
    munge_socket = _start_munge(d, cluster)
    ctld_port, n1_port, n2_port = _free_ports(3)
    cluster.conf.write_text(
        SLURM_CONF.format(
            d=d, ctld_port=ctld_port, n1_port=n1_port, n2_port=n2_port, munge_socket=munge_socket
        )
    )
    _start(["slurmctld", "-c"], cluster.env, cluster)  # -c: no state from an earlier session
    _wait(
        lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
        30,
        "slurmctld to answer `scontrol ping`",
        cluster,
    )
    hosts = _resolve_node_names(d, cluster.nodes)
    for node in cluster.nodes:
        cmd = ["slurmd", "-N", node]
        _start(_private_hosts_cmd(hosts, *cmd) if hosts else cmd, cluster.env, cluster)
    _wait(
        lambda: _node_states(cluster) == dict.fromkeys(cluster.nodes, "idle"),
        30,
        f"nodes {', '.join(cluster.nodes)} to be idle in `sinfo`",
        cluster,
    )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A started two-node cluster (nodes n1 and n2, 2 CPUs each, partition `debug`)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    _install_slurm()
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o755)
    (d / "state").mkdir()
    for node in NODES:
        (d / f"spool-{node}").mkdir(mode=0o755)
    conf = d / "slurm.conf"
    cluster = SlurmCluster(d, conf, {**os.environ, "SLURM_CONF": str(conf)})
    saved = os.environ.get("SLURM_CONF")
    try:
        _start_cluster(d, cluster)
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        names = (*(f"slurmd-{node}.pid" for node in NODES), "slurmctld.pid", "munged.pid")
        _stop(*(d / name for name in names))
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


MULTINODE_STEPS = 6
"""Steps of the runs the multi-node tests compare (each equals its one-node reference)."""


def multinode_overrides(data_dir: Path, layout: str, steps: int = MULTINODE_STEPS) -> list[str]:
    """The small GPT of tests/_dist.py at `parallel=<layout>` (`single` at 2 ranks = DP=2)."""
    from tests._dist import small_gpt_overrides

    return [*small_gpt_overrides(data_dir, steps), f"parallel={layout}"]


@pytest.fixture(scope="session")
def reference_losses(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """`reference_losses(layout)`: per-step losses of the one-node 2-process run (cached).

    Shared by every multi-node test (torchrun agents, `sbatch --nodes=2`, Slurm sweeps) so that
    each layout's reference is trained once per session.
    """
    from tests._dist import run_pretrain

    cache: dict[str, list[float]] = {}

    def losses(layout: str) -> list[float]:
        if layout not in cache:
            run_dir = tmp_path_factory.mktemp(f"reference-{layout}") / "run"
            result = run_pretrain(2, multinode_overrides(prepared_data, layout), run_dir)
            cache[layout] = result.losses()
            assert len(cache[layout]) == MULTINODE_STEPS, result.output[-3000:]
        return cache[layout]

    return losses
