"""The final summary of launch/gpu_check.sh: one block on stdout, the same as JSON (stdlib only).

    python launch/gpu_check_report.py WORK_DIR [JSON_OUT]

Reads what the phases left in WORK_DIR: phases.tsv (name, status, rc, wall seconds, timeout),
env.json (torch/CUDA/GPU/megatron-core/TE/Apex), gpu_tests.xml (pytest's junit report) and
logs/bench.log (bench/train.py's `BENCH_JSON` line and gpu_check.sh's `BENCH_MEM` line).
Exit status: 0 all phases ok and no test failed; 2 no torch or no CUDA (GPU phases skipped);
1 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _json_line(path: Path, prefix: str) -> dict | None:
    if not path.is_file():
        return None
    found = None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(prefix):
            with contextlib.suppress(json.JSONDecodeError):
                found = json.loads(line[len(prefix) :])
    return found


def _tests(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    failed_names = [
        f"{case.get('classname', '')}::{case.get('name', '')}"
        for suite in suites
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        "passed": count["tests"] - count["failures"] - count["errors"] - skipped,
        "failed": count["failures"],
        "errors": count["errors"],
        "skipped": skipped,
        "failed_tests": failed_names,
    }


def main() -> int:
    work = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
    phases = []
    tsv = work / "phases.tsv"
    for line in tsv.read_text().splitlines() if tsv.is_file() else []:
        name, status, rc, wall, limit = line.split("\t")
        phases.append(
            {"phase": name, "status": status, "rc": int(rc), "wall_s": float(wall),
             "timeout_s": int(limit)}
        )  # fmt: skip
    env = json.loads((work / "env.json").read_text()) if (work / "env.json").is_file() else {}
    tests = _tests(work / "gpu_tests.xml")
    bench = _json_line(work / "logs" / "bench.log", "BENCH_JSON ")
    mem = _json_line(work / "logs" / "bench.log", "BENCH_MEM ")
    row = (bench or {}).get("results", [None])[0] if bench else None
    total = float((work / "total_s").read_text()) if (work / "total_s").is_file() else None
    budget = int((work / "budget_s").read_text()) if (work / "budget_s").is_file() else None

    skipped_reason = env.get("skip_reason")
    ran = [p for p in phases if p["status"] != "skipped"]
    ok = all(p["status"] == "ok" for p in ran) and not (
        tests and (tests["failed"] or tests["errors"])
    )
    if skipped_reason:
        what = "NO CUDA" if skipped_reason.startswith("no CUDA") else "NOT RUN"
        how = "GPU phases skipped"
        if env.get("forced"):
            how = "GPU_CHECK_FORCE=1: every phase ran anyway"
        verdict = f"{what} ({how})"
    else:
        verdict = "PASS" if ok else "FAIL"
    summary = {
        "verdict": verdict,
        "skip_reason": skipped_reason,
        "env": env,
        "phases": phases,
        "gpu_tests": tests,
        "bench": row,
        "bench_device": (bench or {}).get("device"),
        "bench_memory": mem,
        "total_wall_s": total,
        "budget_s": budget,
    }

    bar = "=" * 78
    lines = [bar, f"gpu_check summary: {verdict}", bar]
    if skipped_reason:
        lines.append(f"why: {skipped_reason}")
    e = {k: env.get(k, "?") for k in ("python", "torch", "cuda", "gpu", "gpus", "driver")}
    lines.append(
        f"python {e['python']} | torch {e['torch']} (CUDA {e['cuda']}) | "
        f"GPU {e['gpu']} x{e['gpus']} | driver {e['driver']}"
    )
    lines.append(
        "megatron-core {megatron_core} | Transformer Engine {te} | Apex {apex}".format(
            **{k: env.get(k, "?") for k in ("megatron_core", "te", "apex")}
        )
    )
    lines.append(f"{'phase':12s} {'status':10s} {'wall_s':>8s} {'limit_s':>8s}")
    for p in phases:
        if p["status"] == "skipped":
            lines.append(f"{p['phase']:12s} {'skipped':10s} {'-':>8s} {'-':>8s}")
        else:
            wall, limit = p["wall_s"], p["timeout_s"]
            lines.append(f"{p['phase']:12s} {p['status']:10s} {wall:8.1f} {limit:8d}")
    if tests:
        lines.append(
            f"GPU tests: {tests['passed']} passed, {tests['failed']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped"
        )
        lines += [f"  failed: {name}" for name in tests["failed_tests"]]
    else:
        lines.append("GPU tests: no result")
    if row:
        lines.append(
            f"bench {row['model']} ({row['params_m']}M params, {row['precision']}, "
            f"{row['tokens_per_step']} tokens/step): {row['ours_tokens_per_s']} tokens/s "
            f"(bare megatron loop {row['bare_tokens_per_s']}, overhead {row['overhead_pct']}%), "
            f"{row['tflops_per_device']} TFLOP/s, MFU {row['mfu']}"
        )
    else:
        lines.append("bench: no result")
    if mem:
        lines.append(
            f"bench peak GPU memory (both models of the process): {mem['max_allocated_gib']:.1f} "
            f"GiB allocated, {mem['max_reserved_gib']:.1f} GiB reserved"
        )
    if total is not None:
        lines.append(f"total wall {total:.1f} s (budget {budget} s)")
    lines.append(bar)
    print("\n".join(lines))
    if out:
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary JSON: {out}")
    if skipped_reason:
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
