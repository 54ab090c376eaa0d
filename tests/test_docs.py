"""Every config key users can set is documented in README.md (the key reference tables)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tests.conftest import REPO_ROOT


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


def _config_classes() -> list[tuple[str, type]]:
    from data_pipeline.config import PrepareConfig
    from pretrain.config import PretrainConfig

    return [("data_pipeline", PrepareConfig), ("pretrain", PretrainConfig)]


@pytest.mark.parametrize("job", ["data_pipeline", "pretrain"])
def test_every_config_key_is_documented_in_readme(job: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_][a-z0-9_.]*)`", readme))
    cls = dict(_config_classes())[job]
    keys = _keys(cls)
    assert len(keys) > 10
    missing = [k for k in keys if k not in documented]
    assert not missing, f"{job} config keys missing from README.md's key reference: {missing}"
