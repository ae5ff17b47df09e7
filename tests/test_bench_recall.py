"""Recall of the shipped mqar-tiny checkpoint: high at the training length, and the same
for every backend and knob setting (scheduling never changes the logical result)."""

import functools

import pytest
import torch

import autotune.bench.recall as recall_module
from autotune.bench.recall import CHECKPOINT, measure_recall, recall_model
from kernels.model import get_config
from kernels.mqar import TRAIN_LEN, TRAIN_PAIRS
from kernels.weights import read_checkpoint_config
from schedulers import Knobs, make_scheduler

NH = get_config("mqar-tiny").num_heads
REFERENCE = ("sequential", Knobs(1, NH, 64, 64))
SETTINGS = [
    REFERENCE,
    ("sequential", Knobs(1, 4, 16, 1)),
    ("sequential", Knobs(1, 2, 256, 256)),
    ("queued", Knobs(4, 2, 32, 8)),
    ("queued", Knobs(3, 1, 7, 7)),
    ("ray", Knobs(2, 4, 64, 16)),
]


def recall_with(backend: str, knobs: Knobs, context: int = TRAIN_LEN) -> dict:
    with make_scheduler(backend, knobs, device="cpu", dtype=torch.float32) as scheduler:
        return measure_recall(recall_model(torch.device("cpu"), scheduler), context)


@functools.cache
def training_length_recall(backend: str, knobs: Knobs) -> dict:
    """At the training length, on the benchmark's own evaluation data (computed once)."""
    return recall_with(backend, knobs)


def test_checkpoint_is_small_and_matches_the_shape():
    assert CHECKPOINT.stat().st_size < 8 * 2**20
    assert read_checkpoint_config(CHECKPOINT) == get_config("mqar-tiny")


def test_recall_at_the_training_length():
    result = training_length_recall(*REFERENCE)
    assert result["mqar_pairs"] == TRAIN_PAIRS
    assert result["mqar_queries"] >= 1000
    assert result["recall"] >= 0.9


# One-step windows and Ray actors take over 10 s here on 2 cores: the full suite only.
@pytest.mark.parametrize("setting", [pytest.param(s, marks=pytest.mark.slow) if s[0] == "ray" or s[1].T_inner == 1 else s
                                     for s in SETTINGS[1:]], ids=lambda s: f"{s[0]}-{s[1].as_dict()}")
def test_recall_is_equal_for_every_backend_and_knob_setting(setting):
    # Equal to the last decimal, with the same pairs and queries.
    assert training_length_recall(*setting) == training_length_recall(*REFERENCE)


@pytest.mark.slow
def test_recall_at_a_longer_context_scales_pairs(monkeypatch):
    monkeypatch.setattr(recall_module, "RECALL_TOKENS", 4096)
    context = 4 * TRAIN_LEN
    result = recall_with("queued", Knobs(2, 4, 32, 32), context)
    assert result["mqar_pairs"] == 4 * TRAIN_PAIRS
    assert result["mqar_queries"] == 4 * 4 * TRAIN_PAIRS  # 4 sequences of 4096 / 1024 tokens
    assert 0.0 <= result["recall"] < training_length_recall(*REFERENCE)["recall"]
    assert result == recall_with(*REFERENCE, context)
