"""Which official xLSTM variants compare-official measures, and which one is its best.

The official model has settings that move its speed a lot (the weight layout, the chunk
size of its prefill kernel, its decode step kernel, eager or compiled decode). A fair
comparison measures each and divides by the fastest. This module is the bookkeeping:
the variant grid, every measurement or crash on record, and the best per workload. It
needs no GPU (the tests run it on the CPU).
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass
from itertools import product


@dataclass(frozen=True)
class PrefillVariant:
    weight_mode: str
    chunkwise_kernel: str
    chunk_size: int

    @property
    def name(self) -> str:
        return f"{self.weight_mode}/{self.chunkwise_kernel}/chunk{self.chunk_size}"


@dataclass(frozen=True)
class DecodeVariant:
    weight_mode: str
    step_kernel: str
    compiled: bool

    @property
    def name(self) -> str:
        return f"{self.weight_mode}/{self.step_kernel}/{'compiled' if self.compiled else 'eager'}"


def prefill_grid(weight_modes, chunkwise_kernels, chunk_sizes) -> list[PrefillVariant]:
    return [PrefillVariant(w, k, c) for w, k, c in product(weight_modes, chunkwise_kernels, chunk_sizes)]


def decode_grid(weight_modes, step_kernels, compiled_step_kernels, compiled_weight_modes=None) -> list[DecodeVariant]:
    """Eager decode for every step kernel; compiled decode (the costly one to build) only
    for the step kernels in compiled_step_kernels and the weight modes in
    compiled_weight_modes (default: all)."""
    eager = [DecodeVariant(w, s, False) for w, s in product(weight_modes, step_kernels)]
    modes = [w for w in weight_modes if compiled_weight_modes is None or w in compiled_weight_modes]
    return eager + [DecodeVariant(w, s, True) for w, s in product(modes, compiled_step_kernels)]


def describe_error(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message (or of the
    innermost frame when the message is empty)."""
    text = str(exc).strip().splitlines()
    if text:
        return f"{type(exc).__name__}: {text[0][:300]}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


class VariantResults:
    """Every measurement of every variant, per workload ("prefill:<L>", "decode:b<B>").

    An entry is {"variant": name, "settings": {...}, "tok_s": float} when it ran, or
    {"variant": name, "settings": {...}, "error": "<type>: <message>"} when it crashed.
    """

    def __init__(self):
        self.entries: dict[str, list[dict]] = {}

    def add(self, workload: str, variant, *, tok_s: float | None = None, error: str | None = None,
            **extra) -> dict:
        if (tok_s is None) == (error is None):
            raise ValueError("an entry has either tok_s or error")
        entry = {"variant": variant.name, "settings": asdict(variant), **extra}
        entry["tok_s" if error is None else "error"] = tok_s if error is None else error
        self.entries.setdefault(workload, []).append(entry)
        return entry

    def measure(self, workload: str, variant, fn, on_error=None) -> dict:
        """Run fn() -> {"tok_s": ..., ...}; a raised exception becomes a crash entry
        (on_error(exc) runs first, e.g. to free device memory)."""
        try:
            out = dict(fn())
        except Exception as exc:  # a variant that cannot run here is a result, not the end of the run
            if on_error is not None:
                on_error(exc)
            return self.add(workload, variant, error=describe_error(exc))
        tok_s = out.pop("tok_s")
        return self.add(workload, variant, tok_s=tok_s, **out)

    def best(self, workload: str) -> dict | None:
        """The fastest entry that ran, or None when none did."""
        ran = [e for e in self.entries.get(workload, []) if "tok_s" in e]
        return max(ran, key=lambda e: e["tok_s"]) if ran else None

    def crashed(self) -> list[dict]:
        """Each variant that crashed, once, with its error and the workloads it crashed on."""
        seen: dict[str, dict] = {}
        for workload, entries in self.entries.items():
            for e in entries:
                if "error" in e:
                    item = seen.setdefault(e["variant"], {"variant": e["variant"], "error": e["error"],
                                                          "workloads": []})
                    item["workloads"].append(workload)
        return list(seen.values())

    def as_dict(self) -> dict:
        return {"measured": self.entries, "crashed": self.crashed(),
                "best": {w: (b["variant"] if (b := self.best(w)) else None) for w in self.entries}}


def weight_bytes_read_per_step(model) -> int:
    """Bytes of weights one decode step streams: every parameter but the embedding table
    (of which a step reads one row)."""
    embedding = model.embedding.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)


def state_bytes_per_sequence(config) -> int:
    """fp32 (C, n, m) of every mLSTM block for one sequence."""
    dhqk, dhv = config.qk_dim // config.num_heads, config.v_dim // config.num_heads
    blocks = config.num_blocks - len(config.slstm_at)
    return blocks * config.num_heads * (dhqk * dhv + dhqk + 1) * 4


def decode_bound_tok_s(weight_bytes: float, state_bytes_per_seq: float, batch: int, copy_bytes_per_s: float) -> float:
    """Tokens/s if a decode step only streamed the weights once and each sequence's state
    in and out once at the measured copy bandwidth (bytes read + written per second)."""
    step_bytes = weight_bytes + 2 * state_bytes_per_seq * batch
    return batch * copy_bytes_per_s / step_bytes


@dataclass(frozen=True)
class OfficialPlan:
    """The official settings compare-official measures (every combination)."""

    weight_modes: tuple[str, ...] = ("fused", "single")
    chunkwise_kernels: tuple[str, ...] = ("chunkwise--triton_limit_chunk", "chunkwise--triton_xl_chunk")
    chunk_sizes: tuple[int, ...] = (64, 128, 256)
    step_kernels: tuple[str, ...] = ("native", "triton")
    compiled_step_kernels: tuple[str, ...] = ("native",)
    sequence_kernel: str = "native_sequence__native"
    compiled_weight_modes: tuple[str, ...] | None = None  # None: every weight mode
