"""The embedded code-instruction corpus: ast pairs from Python source, the held-out split by
module, and the input=stdlib_instruct preset end to end (mask = completion + EOD)."""

from __future__ import annotations

import json
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig
from data_pipeline.errors import ConfigError
from data_pipeline.instruct.stdlib_pairs import MAX_BODY_LINES, python_pairs
from data_pipeline.listing import is_heldout, list_sources
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import load_processor

SOURCE = textwrap.dedent(
    '''\
    import functools


    def no_doc(x):
        y = x + 1
        return y


    def one_liner(x):
        """Doc."""
        return x


    class Box:
        @functools.cache
        def area(self, scale: int = 1) -> int:
            """Area of the box.

            Scaled by `scale`.
            """

            width = self.w * scale
            return width * self.h

        def inline(self): "Doc"; return 1

        def dedent_string(self):
            """Doc."""
            text = """
    at column zero
    """
            return text


    async def fetch(url):
        """Fetch `url`."""
        async with session() as s:
            return await s.get(url)
    '''
)


def test_pairs_from_source():
    pairs = list(python_pairs(SOURCE.encode()))
    lines = SOURCE.splitlines()
    where = [
        lines.index("    def area(self, scale: int = 1) -> int:"),
        lines.index("async def fetch(url):"),
    ]
    assert [line for line, _ in pairs] == [n + 1 for n in where]  # the def's line, source order
    (_, area), (_, fetch) = pairs
    assert area["prompt"] == (
        "@functools.cache\n"
        "def area(self, scale: int = 1) -> int:\n"
        '    """Area of the box.\n'
        "\n"
        "    Scaled by `scale`.\n"
        '    """\n'
    )
    assert area["completion"] == "    width = self.w * scale\n    return width * self.h\n"
    assert fetch == {
        "prompt": 'async def fetch(url):\n    """Fetch `url`."""\n',
        "completion": "    async with session() as s:\n        return await s.get(url)\n",
    }


def test_pairs_skip_rule_and_syntax_error():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_BODY_LINES + 1))
    source = f'def big():\n    """Doc."""\n{body}'
    assert list(python_pairs(source.encode())) == []
    source = f'def big():\n    """Doc."""\n{body.split(chr(10), 1)[1]}'  # exactly the maximum
    assert len(list(python_pairs(source.encode()))) == 1
    with pytest.raises(SyntaxError):
        list(python_pairs(b"def broken(:\n"))


def _stdlib_input(**kw) -> InputConfig:
    return InputConfig(
        name="stdlib_instruct",
        paths=["stdlib:"],
        format="prompt_completion",
        python_pairs=True,
        include=["*.py"],
        exclude=["site-packages/*", "dist-packages/*", "test/*", "*/test/*", "*/tests/*"],
        template="plain",
        max_tokens=512,
        **kw,
    )


def test_heldout_split_by_module_is_disjoint_and_deterministic():
    every = {s.path for s in list_sources(_stdlib_input())}
    train = [s.path for s in list_sources(_stdlib_input(subset="train"))]
    heldout = [s.path for s in list_sources(_stdlib_input(subset="heldout"))]
    assert set(train).isdisjoint(heldout) and set(train) | set(heldout) == every
    assert train == sorted(train)  # sorted relative paths of one folder
    # sha256 is uniform: 5% of ~700 modules, within 4 standard deviations (sqrt(700*.05*.95)=5.8)
    assert abs(len(heldout) - 0.05 * len(every)) < 4 * 5.8
    root = Path(sysconfig.get_paths()["stdlib"])
    assert all(is_heldout(Path(p).relative_to(root).as_posix(), 0.05) for p in heldout)
    assert heldout == [s.path for s in list_sources(_stdlib_input(subset="heldout"))]
    with pytest.raises(ConfigError, match="input.subset"):
        list_sources(_stdlib_input(subset="heldout", heldout_fraction=0.0))


def test_stdlib_instruct_prepare_masks_the_completion(tmp_path, sp_model):
    root = Path(sysconfig.get_paths()["stdlib"])
    inp = _stdlib_input()
    inp.paths = [str(root / "json"), str(root / "textwrap.py")]  # a folder and a file
    inp.max_tokens = 8192  # none is cut with this small (512) vocabulary
    cfg = PrepareConfig(
        input=inp,
        tokenizer=TokenizerConfig(model=str(sp_model)),
        output=OutputConfig(dir=str(tmp_path / "out")),
        progress=False,
    )
    out = run_prepare(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    pairs = []
    for path in [*sorted((root / "json").glob("*.py")), root / "textwrap.py"]:
        pairs += [pair for _, pair in python_pairs(path.read_bytes())]
    assert manifest["totals"]["num_docs"] == len(pairs) > 20
    assert manifest["instruct"]["format"] == "prompt_completion"
    assert manifest["skipped"]["counts"] == {}  # modules without pairs are not "empty files"
    sp = load_processor(out / "tokenizer.model")
    dataset_cls = indexed_dataset().IndexedDataset
    tokens = dataset_cls(str(out / "shard_00000"))
    masks = dataset_cls(str(out / "shard_00000.loss_mask"))
    for i, pair in enumerate(pairs):
        ids, mask = np.array(tokens[i]), np.array(masks[i])
        assert ids.tolist() == sp.encode(pair["prompt"] + pair["completion"]) + [2]
        first = int(np.argmax(mask))
        assert mask[first:].all() and not mask[:first].any()  # one target run, to the EOD
        # decoded after a leading "a": SentencePiece drops the first piece's leading space
        target = sp.decode([sp.piece_to_id("a"), *ids[first:-1].tolist()])[1:]
        # a completion begins with indentation after the docstring's newline: the boundary
        # falls between pieces, so the targets are exactly the completions
        assert target == pair["completion"]


def test_preset_composes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from data_pipeline.config import register_configs, validate

    register_configs()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = OmegaConf.to_object(compose("prepare", overrides=["input=stdlib_instruct"]))
    assert cfg.input.python_pairs and cfg.input.format == "prompt_completion"
    assert (cfg.input.template, cfg.input.max_tokens, cfg.input.subset) == ("plain", 512, "all")
    validate(cfg)
