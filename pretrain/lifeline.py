"""A trainer must not outlive its torchrun agent.

torchrun's agent starts the trainers and is the only one that stops them. When the agent dies
without cleaning up (SIGKILL, the OOM killer, a node's launcher killed), its trainers would live
on as orphans: still joined to the other nodes' process groups, they keep a half-dead job
training (or waiting) until `parallel.timeout_minutes` or the end of the run. `die_with_parent`
asks Linux to send this process SIGKILL the moment its parent exits (PR_SET_PDEATHSIG), so the
other ranks see their connections close at once and end the job (`pretrain.parallel.PeerLost`).

Linux only (prctl via ctypes); elsewhere it only logs at debug level. It acts only under
torchrun (`under_torchrun()`), never for a plain `python -m pretrain`, whose parent is a shell
or a test harness that may legitimately exit first. Call it first thing in the entry point.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal this process gets when its parent thread exits."""

EXIT_PARENT_GONE = 1
"""Exit code when the parent already died before the death signal was armed."""


def under_torchrun() -> bool:
    """Whether torchrun (torch elastic) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _set_pdeathsig(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig); False when the call is unavailable or fails."""
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError as exc:
        log.debug("no libc (%s): parent-death signal not set", exc)
        return False
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Under torchrun: have the kernel send `sig` to this process when its agent dies.

    A no-op (False) outside torchrun. If the parent died before the signal was armed (this
    process was re-parented: getppid() changed), exit at once. Returns whether the signal is
    armed (False off Linux). The signal fires when the parent *thread* that forked us exits;
    torchrun starts its workers from the agent's main thread, so that is the agent's own exit.
    """
    if not under_torchrun():
        return False
    parent = os.getppid()
    if not sys.platform.startswith("linux"):
        log.debug("die_with_parent: not Linux (%s); trainers may outlive torchrun", sys.platform)
        return False
    armed = _set_pdeathsig(sig)
    if os.getppid() != parent:
        print(
            f"pretrain: torchrun's agent (pid {parent}) exited before this trainer started; "
            "exiting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_PARENT_GONE)
    return armed
