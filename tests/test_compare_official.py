"""`autotune compare-official` where it cannot measure: clear errors, no tracebacks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from autotune.cli import main
from autotune.errors import UserError
from autotune import compare_official as co
from autotune.commands import compare_official as command
from autotune.compare_official_model import official_modules


def test_without_a_gpu_the_command_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["compare-official", "--shape", "7b"]) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU" in err and "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("xlstm") is not None, reason="the official package is installed")
def test_missing_official_package_names_the_install():
    with pytest.raises(UserError, match=r"pip install xlstm==2\.0\.6 mlstm_kernels==2\.0\.6"):
        official_modules()


def test_contexts_and_knobs_are_validated():
    assert command._parse_contexts("2048, 8192") == [2048, 8192]
    for bad in ("", "2k", "0,8"):
        with pytest.raises(UserError, match="contexts"):
            command._parse_contexts(bad)
    assert co._parse_knobs('{"workers": 2, "heads_per_band": 4, "chunk_size": 64, "T_inner": 32}', "--config", 8) == {
        "workers": 2, "heads_per_band": 4, "chunk_size": 64, "T_inner": 32}
    with pytest.raises(UserError, match="not JSON"):
        co._parse_knobs("{workers: 2}", "--config", 8)
    with pytest.raises(UserError, match="heads_per_band 3 does not divide"):
        co._parse_knobs('{"workers": 1, "heads_per_band": 3, "chunk_size": 64, "T_inner": 64}', "--config", 8)


def test_table_shows_every_ratio():
    result = {"shape": "7b", "gpu": "GPU", "torch": "2.x",
              "decode_tok_s": {"ours": 200.0, "official": 20.0},
              "prefill_tok_s": {"2048": {"ours": 10.0, "official": 20.0}, "8192": {"ours": 30.0, "official": None}},
              "ratios": {"decode": 10.0, "prefill": {"2048": 0.5, "8192": None}}}
    table = command.format_table(result)
    assert "10.00x" in table and "0.50x" in table
    assert "prefill L=8192" in table and table.splitlines()[-1].rstrip().endswith("-")
