"""Export a damaged copy of a checkpoint once per kind of damage, in this one process.

    python tests/checkpoint/_export_damaged.py CKPT_DIR WORK_DIR

Prints one JSON line: {kind: {"rc", "file", "errors"}} with the exit code of
`pretrain.export_hf.main`, the damaged file's name and the error lines it logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from pretrain import export_hf
from tests.checkpoint._tamper import DAMAGE_KINDS, damage


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(source: Path, work: Path) -> dict:
    """Damage, export, record; one entry per kind of damage."""
    results = {}
    for kind in DAMAGE_KINDS:
        ckpt = work / kind / source.name
        shutil.copytree(source, ckpt)
        name = damage(ckpt, kind)
        errors = _Errors()
        logging.getLogger("pretrain").addHandler(errors)
        rc = export_hf.main(
            [f"checkpoint={ckpt}", f"output={work / kind / 'hf'}", "sample_prompt=null"]
        )
        logging.getLogger("pretrain").removeHandler(errors)
        results[kind] = {"rc": rc, "file": str(ckpt / name), "errors": errors.lines}
    return results


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
