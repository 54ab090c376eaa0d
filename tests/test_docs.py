"""The docs stay true to the code: every config key is documented in docs/configuration.md,
the `key=value` tools' keys in docs/checkpoints.md, every relative link in README.md and docs/
resolves (file and anchor), README.md stays a front page, and every `make TARGET` it mentions
exists in the Makefile."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
CHECKPOINTS = DOCS / "checkpoints.md"
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_KEY_CELL = re.compile(r"^\|\s*`([^`]+)`")


# --- helpers (plain functions of text, so the tests below can check them on broken input) ---


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (code blocks are blanked, so numbering stays)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else line)
    return lines


def _strip_inline_code(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))  # [text](url) -> text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(path: Path) -> list[str]:
    """Relative links of a markdown file whose target file (or heading anchor) does not exist."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for number, line in enumerate(_prose_lines(text), 1):
        for target in _LINK.findall(_strip_inline_code(line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.name}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif (
                anchor
                and dest.suffix == ".md"
                and dest.is_file()
                and anchor.lower() not in (github_anchors(dest.read_text(encoding="utf-8")))
            ):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.name})")
    return problems


def section(text: str, heading: str) -> str:
    """The text under the first heading whose title starts with `heading`, up to the next
    heading of the same or a higher level."""
    lines = text.splitlines()
    prose = _prose_lines(text)
    for start, line in enumerate(prose):
        match = _HEADING.match(line)
        if match and match.group(2).startswith(heading):
            level = len(match.group(1))
            end = len(lines)
            for later in range(start + 1, len(lines)):
                other = _HEADING.match(prose[later])
                if other and len(other.group(1)) <= level:
                    end = later
                    break
            return "\n".join(lines[start:end])
    raise AssertionError(f"no heading starting with {heading!r}")


def table_keys(text: str) -> set[str]:
    """The `key`s in the first column of the markdown tables of `text` (a cell may name
    several, e.g. `` `prompt` / `prompt_file` ``)."""
    keys: set[str] = set()
    for line in text.splitlines():
        if _KEY_CELL.match(line):
            keys.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


def make_targets(makefile_text: str) -> set[str]:
    """The targets a Makefile defines (rules and .PHONY names; not variable assignments)."""
    targets: set[str] = set()
    for line in makefile_text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.%/-][A-Za-z0-9_.%/ -]*):(?!=)(.*)$", line)
        if not match:
            continue
        names = match.group(1).split()
        if names == [".PHONY"]:
            targets.update(match.group(2).split())
        else:
            targets.update(names)
    return targets


def mentioned_make_targets(text: str) -> set[str]:
    """Every `make TARGET` in a text (prose and code blocks alike)."""
    return set(re.findall(r"(?<![\w.-])make ([a-z][a-z0-9_-]*)", text))


def _keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys.extend(_keys(type(default), name + "."))
        else:
            keys.append(name)
    return keys


def _dataclass_fields_from_source(path: Path, suffix: str = "Config") -> dict[str, list[str]]:
    """Field names of the dataclasses named *Config in a source file, read without importing it
    (the tools' modules import torch and megatron)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith(suffix):
            names = [
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            ]
            found[node.name] = names
    return found


def _config_classes() -> list[tuple[str, type]]:
    from data_pipeline.config import PrepareConfig
    from pretrain.config import PretrainConfig

    return [("data_pipeline", PrepareConfig), ("pretrain", PretrainConfig)]


# --- the docs ---

_JOB_SECTIONS = {"data_pipeline": "data_pipeline keys", "pretrain": "pretrain keys"}


@pytest.mark.parametrize("job", ["data_pipeline", "pretrain"])
def test_every_config_key_is_documented(job: str) -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = table_keys(section(text, _JOB_SECTIONS[job]))
    keys = _keys(dict(_config_classes())[job])
    assert len(keys) > 10
    missing = [k for k in keys if k not in documented]
    assert not missing, (
        f"{job} config keys missing from the key tables of docs/configuration.md "
        f"(section {_JOB_SECTIONS[job]!r}): {missing}"
    )


@pytest.mark.parametrize(
    ("source", "heading"),
    [
        ("pretrain/hf/export.py", "Export to Hugging Face"),
        ("pretrain/hf/importer.py", "Import from Hugging Face"),
        ("pretrain/generate.py", "Generate text"),
    ],
)
def test_tool_keys_are_documented(source: str, heading: str) -> None:
    path = REPO_ROOT / source
    if not path.is_file():
        pytest.skip(f"{source} does not exist (yet)")
    classes = _dataclass_fields_from_source(path)
    if not classes:
        pytest.skip(f"{source} defines no *Config dataclass")
    documented = table_keys(section(CHECKPOINTS.read_text(encoding="utf-8"), heading))
    for name, fields in classes.items():
        missing = [f for f in fields if f not in documented]
        assert not missing, f"{name} keys missing from docs/checkpoints.md ({heading}): {missing}"


@pytest.mark.parametrize("preset", ["submitit_local", "submitit_slurm"])
def test_launcher_keys_are_documented(preset: str) -> None:
    from omegaconf import OmegaConf

    keys = [k for k in OmegaConf.load(REPO_ROOT / "conf/hydra/launcher" / f"{preset}.yaml")]
    documented = table_keys(
        section((DOCS / "sweeps.md").read_text(encoding="utf-8"), "Launcher keys")
    )
    missing = [k for k in keys if k != "_target_" and k not in documented]
    assert not missing, (
        f"hydra.launcher keys of {preset}.yaml missing from docs/sweeps.md: {missing}"
    )


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_stays_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines (limit {README_MAX_LINES}): move reference material to docs/"
    )


def test_readme_make_targets_exist() -> None:
    mentioned = mentioned_make_targets(README.read_text(encoding="utf-8"))
    assert {"demo", "test", "setup"} <= mentioned
    defined = make_targets((REPO_ROOT / "Makefile").read_text(encoding="utf-8"))
    missing = sorted(mentioned - defined)
    assert not missing, f"README.md mentions make targets the Makefile lacks: {missing}"


# --- the checkers themselves catch what they should ---


def test_checkers_catch_broken_input(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A `key` section (x.py)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## First run\n\n"
        "[ok](other.md) [ok](other.md#a-key-section-xpy) [ok](#first-run) [web](https://x.org)\n"
        "```\n[in code](missing.md)\n```\n"
        "`[inline](missing.md)`\n"
        "[bad](missing.md) [bad](other.md#nope) [bad](#nope)\n"
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "missing.md (no such file)" in problems[0]
    assert "#nope" in problems[1] and "#nope" in problems[2]

    assert github_anchors("# A\n## A\n## `x.y` (b/c)\n") == {"a", "a-1", "xy-bc"}

    makefile = "X := 1\n.PHONY: a b\na: setup\n\tcmd\nsetup: $(VENV)/.installed\nc d:\n"
    assert make_targets(makefile) == {"a", "b", "setup", "c", "d"}
    assert mentioned_make_targets("run `make demo`, then make test-fast; cmake x") == {
        "demo",
        "test-fast",
    }

    doc = "## Keys\n| key | d |\n|---|---|\n| `a.b` | `x` |\n| `p` / `q` | 1 |\n## Other\n| `c` |\n"
    assert table_keys(section(doc, "Keys")) == {"a.b", "p", "q"}
