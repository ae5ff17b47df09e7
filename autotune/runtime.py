"""The runner's library API: a model plus a scheduler configured from the tuned defaults.

    from autotune.runtime import load_runner

    with load_runner("350m", device="cuda", backend="queued", prompt_len=2048) as runner:
        print(runner.choice.describe())          # the knobs picked for 2048-token prompts
        result = runner.generate(prompt_ids, new_tokens=64)

The knobs and kernel parameters come from `autotune.defaults.pick_choice`
(studies/defaults.json, written by `autotune export`): the row tuned for the batch and
the smallest context >= prompt_len on this device kind and backend, or the built-in
default with a DefaultsWarning when there is none. The kernels run with the row's kernel
parameters (a KernelRun owned by the runner); `runner.kernels.what_ran()` says which ran.
There is no tokenizer: prompts are token ids (byte values for the byte-level shapes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from autotune.defaults import Choice, pick_choice
from autotune.names import DTYPES, torch_dtype
from kernels import XLSTM, get_config, resolve_device, synchronize
from kernels.registry import KernelRun, use_run
from kernels.weights import WeightsError, load_checkpoint, load_official_xlstm, read_checkpoint_config
from schedulers import Knobs, make_scheduler


@dataclass(frozen=True)
class GenerationResult:
    """Greedy continuation of one prompt and how fast it ran."""

    tokens: list[int]  # the new token ids
    prompt_len: int
    prefill_s: float  # the prompt pass, device synchronized
    ttft_s: float  # time to the first new token (prefill + its pick)
    decode_s: float  # the len(tokens) - 1 single-token steps after the first token

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_len / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tok_s(self) -> float | None:
        steps = len(self.tokens) - 1
        if steps < 1:
            return None
        return steps / self.decode_s if self.decode_s > 0 else float("inf")


class Runner:
    """A model whose mLSTM cells run through a scheduler with the picked knobs.

    A context manager: leaving it closes the scheduler (threads, Ray actors)."""

    def __init__(self, model, scheduler, choice: Choice, *, shape: str, backend: str, weights: str):
        self.kernels = KernelRun(params=dict(choice.kernel))  # the kernel parameters the runner applies
        self.model = model
        self.scheduler = scheduler
        self.choice = choice
        self.shape = shape
        self.backend = backend
        self.weights = weights  # "random (seed N)" or the checkpoint path

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def knobs(self) -> dict[str, int]:
        return dict(self.choice.config)

    def close(self) -> None:
        self.scheduler.close()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ids(self, prompt: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(prompt, dtype=torch.long).flatten()
        vocab = self.model.config.vocab_size
        if ids.numel() == 0:
            raise ValueError("the prompt is empty; give at least one token id")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids must lie in 0..{vocab - 1} for shape {self.shape!r}; "
                             f"got {int(ids.min())}..{int(ids.max())}")
        return ids.to(self.device).unsqueeze(0)

    # no_grad, not inference_mode: inference tensors cannot be written by the queued
    # backend's worker threads, which are not in inference mode themselves.
    def generate(self, prompt: Sequence[int] | torch.Tensor, new_tokens: int, *, warmup: bool = False) -> GenerationResult:
        """Greedy decoding of `new_tokens` ids after `prompt` (a 1-D sequence of ids), with
        the runner's kernel parameters.

        warmup=True first runs the prompt and one decode step untimed, so compilation
        and lazy initialisation stay out of the reported speeds."""
        with use_run(self.kernels):
            return self._generate(prompt, new_tokens, warmup)

    @torch.no_grad()
    def _generate(self, prompt, new_tokens: int, warmup: bool) -> GenerationResult:
        if new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
        ids = self._ids(prompt)
        if warmup:
            logits, state = self.model(ids)
            self.model(logits[:, -1:].argmax(-1), state)
            synchronize(self.device)
        start = time.perf_counter()
        logits, state = self.model(ids)
        synchronize(self.device)
        prefill_s = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        generated = [int(token.item())]  # .item() synchronizes
        ttft_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits, state = self.model(token, state)
            token = logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token.item()))
        decode_s = time.perf_counter() - start
        return GenerationResult(generated, ids.shape[1], prefill_s, ttft_s, decode_s)


def _build_model(shape: str, device: torch.device, dtype: torch.dtype, checkpoint: str | Path | None, seed: int):
    config = get_config(shape)
    if checkpoint is None:
        return XLSTM(config, device=device, dtype=dtype, seed=seed), f"random (seed {seed})"
    try:
        own = read_checkpoint_config(checkpoint)
    except WeightsError:
        own = None  # not one of ours (or a directory): the official xLSTM layout
    if own is not None:
        if own.name != shape:
            raise ValueError(f"checkpoint {checkpoint} holds shape {own.name!r}, not {shape!r}; pass that shape")
        return load_checkpoint(checkpoint, device=device, dtype=dtype), str(checkpoint)
    model = XLSTM(config, device=device, dtype=dtype, seed=None)
    return load_official_xlstm(model, checkpoint), str(checkpoint)


def load_runner(
    shape: str,
    device: str = "auto",
    backend: str = "queued",
    defaults_path: str | Path | None = None,
    *,
    prompt_len: int,
    dtype: str = "float32",
    checkpoint: str | Path | None = None,
    compile: bool = False,
    address: str | None = None,
    seed: int = 0,
    batch: int = 1,
) -> Runner:
    """A Runner for `shape` on `device` with the knobs tuned for `prompt_len`-token prompts
    (at `batch` sequences: the defaults file's rows of that batch).

    defaults_path: the exported defaults (default studies/defaults.json); missing or
    unusable -> built-in knobs and a DefaultsWarning. checkpoint: an own checkpoint
    (kernels.weights.save_checkpoint) or official xLSTM safetensors; random weights
    (seeded) without one. Raises ValueError (DeviceUnavailableError, WeightsError,
    PlanError are ValueErrors) naming what to fix.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_device = resolve_device(device)
    num_heads = get_config(shape).num_heads
    choice = pick_choice(shape, torch_device.type, backend, prompt_len, defaults_path,
                         dtype=dtype, num_heads=num_heads, batch=batch)
    scheduler = make_scheduler(backend, Knobs(**choice.config), device=torch_device, dtype=torch_dtype(dtype),
                               compile=compile, address=address)
    try:
        model, weights = _build_model(shape, torch_device, torch_dtype(dtype), checkpoint, seed)
        model.cell_runner = scheduler
    except BaseException:
        scheduler.close()
        raise
    return Runner(model, scheduler, choice, shape=shape, backend=backend, weights=weights)
