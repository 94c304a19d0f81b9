"""Replays the fuzz seeds and every input the fuzzer ever found (fuzz/regressions/)."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "fuzz"))
from decoder_target import check

INPUTS = sorted(p for d in ("seeds", "regressions") for p in (ROOT / "fuzz" / d).iterdir() if p.name != "README.md")


@pytest.mark.parametrize("path", INPUTS, ids=[f"{p.parent.name}/{p.name}" for p in INPUTS])
def test_input_gives_only_typed_errors(path):
    check(path.read_bytes())


def test_there_are_seeds():
    assert any(p.parent.name == "seeds" for p in INPUTS)
