"""Recall of the shipped mqar-tiny checkpoint: high at the training length, and the same
for every backend and knob setting (scheduling never changes the logical result)."""

import pytest
import torch

from autotune.bench.recall import CHECKPOINT, measure_recall, recall_model
from kernels.model import get_config
from kernels.mqar import TRAIN_LEN, TRAIN_PAIRS
from kernels.weights import read_checkpoint_config
from schedulers import Knobs, make_scheduler

NH = get_config("mqar-tiny").num_heads


def recall_with(backend: str, knobs: Knobs, context: int = TRAIN_LEN) -> dict:
    with make_scheduler(backend, knobs, device="cpu", dtype=torch.float32) as scheduler:
        return measure_recall(recall_model(torch.device("cpu"), scheduler), context)


def test_checkpoint_is_small_and_matches_the_shape():
    assert CHECKPOINT.stat().st_size < 8 * 2**20
    assert read_checkpoint_config(CHECKPOINT) == get_config("mqar-tiny")


def test_recall_at_the_training_length():
    result = recall_with("sequential", Knobs(1, NH, 64, 64))
    assert result["mqar_pairs"] == TRAIN_PAIRS
    assert result["mqar_queries"] >= 1000
    assert result["recall"] >= 0.9


def test_recall_is_equal_for_every_backend_and_knob_setting():
    settings = [
        ("sequential", Knobs(1, NH, 64, 64)),
        ("sequential", Knobs(1, 1, 16, 1)),
        ("sequential", Knobs(1, 2, 256, 256)),
        ("queued", Knobs(4, 2, 32, 8)),
        ("queued", Knobs(3, 1, 7, 7)),
        ("ray", Knobs(2, 4, 64, 16)),
    ]
    results = {setting: recall_with(*setting) for setting in settings}
    reference = results[settings[0]]
    assert reference["recall"] >= 0.9
    for setting, result in results.items():
        assert result == reference, setting  # recall to the last decimal, pairs and queries


@pytest.mark.parametrize("context", [64, 1024])
def test_recall_at_other_lengths_scales_pairs(context):
    result = recall_with("queued", Knobs(2, 4, 32, 32), context)
    assert result["mqar_pairs"] == TRAIN_PAIRS * context // TRAIN_LEN
    assert 0.0 <= result["recall"] <= 1.0
    assert result == recall_with("sequential", Knobs(1, NH, 64, 64), context)
