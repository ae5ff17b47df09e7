"""Synthetic surfaces with structure, for developing and testing strategies.

Recorded surfaces are few and expensive; these generators give any number of surfaces
with the kinds of structure real ones have, each fixed by a seed:

- `xlstm_surface`: an analytic cost model of the scheduler (kernel-call overhead,
  per-task handoff, concurrency that saturates and then contends, per-backend task
  cost) turned into the tuner's score (decode and prefill tok/s against the built-in
  default, plus recall), with multiplicative measurement noise. Maximise.
- `kernel_cache`: a Kernel Tuner cache (the JSON document) of a tiled GPU kernel:
  block and tile sizes, occupancy from registers and shared memory, warp alignment,
  invalid thread counts ("InvalidConfig"), configs that fail to compile. Minimise time.

Both are randomised models, not measurements: they are for tuning strategy
hyperparameters and for tests, never reported as results of a real machine.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from autotune.replay.surface import Surface, surface_from_kernel_tuner
from autotune.space import SearchSpace

XLSTM_VALUES = {
    "backend": ["queued", "ray"],
    "workers": [1, 2, 4, 8],
    "heads_per_band": [1, 2, 4, 8],
    "chunk_size": [64, 128, 256, 512, 1024],
    "T_inner": [16, 32, 64, 128, 256],
}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def xlstm_surface(seed: int, *, num_heads: int = 8, context: int = 2048, repeats: int = 5,
                  values: dict[str, list[Any]] | None = None) -> Surface:
    """A scheduler cost model with random coefficients (see the module docstring)."""
    rng = np.random.default_rng([seed, 1])
    values = dict(values or XLSTM_VALUES)
    space = SearchSpace(values, num_heads=num_heads, context=context)
    c = {
        "launch": _log_uniform(rng, 5e-6, 60e-6),  # per kernel call
        "flop": _log_uniform(rng, 2e-9, 2e-8),  # per head x step x T_inner (quadratic form)
        "step": _log_uniform(rng, 5e-7, 5e-6),  # per head x step, recurrent part
        "task": {"queued": _log_uniform(rng, 10e-6, 80e-6), "ray": _log_uniform(rng, 100e-6, 900e-6)},
        "saturation": float(rng.uniform(1.5, 6.0)),  # streams before the device is full
        "contention": float(rng.uniform(0.02, 0.25)),  # cost of each worker beyond saturation
        "sweet_t": float(2 ** rng.uniform(4, 8)),  # T_inner with the best compute efficiency
        "decode_step": _log_uniform(rng, 5e-6, 40e-6),  # per band, one token
        "sync": _log_uniform(rng, 2e-6, 30e-6),  # per worker and step in decode
        "layers": 24,
    }

    def times(cfg: dict[str, Any]) -> tuple[float, float]:
        backend = cfg.get("backend", "queued")
        bands = num_heads // cfg["heads_per_band"]
        conc = min(cfg["workers"], bands)
        speedup = min(conc, c["saturation"]) / (1.0 + c["contention"] * max(0.0, conc - c["saturation"]))
        calls = math.ceil(context / cfg["T_inner"]) * bands
        tasks = math.ceil(context / cfg["chunk_size"]) * bands
        eff = 1.0 + 0.35 * math.log2(cfg["T_inner"] / c["sweet_t"]) ** 2  # off the sweet spot costs
        compute = context * num_heads * (c["flop"] * cfg["T_inner"] * eff + c["step"])
        # small bands leave the device idle: efficiency grows with heads per call
        compute *= 1.0 + 0.6 / cfg["heads_per_band"]
        prefill = c["layers"] * ((calls * c["launch"] + compute) / speedup + tasks * c["task"][backend] / max(1.0, conc / 2))
        decode = c["layers"] * (bands * (c["decode_step"] * (1 + 0.3 * cfg["heads_per_band"]) + c["task"][backend])
                                / max(1.0, speedup) + c["sync"] * cfg["workers"])
        return context / prefill, 1.0 / decode  # tok/s

    base_cfg = {"workers": 1, "heads_per_band": num_heads, "chunk_size": 64, "T_inner": 64}
    if "backend" in values:
        base_cfg = {"backend": values["backend"][0], **base_cfg}
    base_prefill, base_decode = times(base_cfg)
    noise_rng = np.random.default_rng([seed, 2])
    sigma = float(rng.uniform(0.01, 0.06))
    samples = []
    for cfg in space.configs:
        prefill, decode = times(cfg)
        jitter_p = np.exp(noise_rng.normal(0, sigma, repeats))
        jitter_d = np.exp(noise_rng.normal(0, sigma, repeats))
        samples.append(prefill * jitter_p / base_prefill + decode * jitter_d / base_decode + 1.0)
    return Surface(f"synthetic-xlstm-{seed}", space.values, "score", "maximize", space.configs, samples,
                   "synthetic", meta={"model": "xlstm", "seed": seed, "context": context})


KERNEL_PARAMS = {
    "block_size_x": [16, 32, 48, 64, 96, 128, 192, 256],
    "block_size_y": [1, 2, 4, 8, 16, 32],
    "tile_size_x": [1, 2, 3, 4],
    "tile_size_y": [1, 2, 3, 4],
    "use_shared": [0, 1],
    "loop_unroll": [0, 1],
}


def kernel_cache(seed: int, *, repeats: int = 7) -> dict[str, Any]:
    """A Kernel Tuner cache document for a randomised tiled-kernel performance model."""
    rng = np.random.default_rng([seed, 3])
    c = {
        "work": _log_uniform(rng, 1.0, 20.0),  # ms at perfect efficiency
        "regs_per_tile": float(rng.uniform(6, 14)),
        "smem_budget": float(rng.choice([48, 64, 96])) * 1024,
        "reuse": float(rng.uniform(0.2, 0.6)),  # how much tiling saves memory traffic
        "shared_gain": float(rng.uniform(0.9, 1.5)),
        "unroll_gain": float(rng.uniform(0.95, 1.15)),
        "odd_tile_penalty": float(rng.uniform(1.0, 1.6)),
        "fail_rate": float(rng.uniform(0.0, 0.05)),
    }
    noise_rng = np.random.default_rng([seed, 4])
    sigma = float(rng.uniform(0.005, 0.03))
    keys = list(KERNEL_PARAMS)
    cache: dict[str, Any] = {}
    for combo in itertools.product(*KERNEL_PARAMS.values()):
        cfg = dict(zip(keys, combo))
        key = ",".join(str(v) for v in combo)
        threads = cfg["block_size_x"] * cfg["block_size_y"]
        entry = dict(cfg)
        if not 32 <= threads <= 1024:
            entry["time"] = "InvalidConfig"
            cache[key] = entry
            continue
        tiles = cfg["tile_size_x"] * cfg["tile_size_y"]
        smem = cfg["use_shared"] * 4 * (cfg["block_size_x"] * cfg["tile_size_x"] + 8) * (cfg["block_size_y"] * cfg["tile_size_y"] + 8)
        regs = 24 + c["regs_per_tile"] * tiles * (1.3 if cfg["loop_unroll"] else 1.0)
        if smem > c["smem_budget"] or regs > 255 or rng.random() < c["fail_rate"]:
            entry["time"] = "CompilationFailedConfig" if regs > 255 or smem > c["smem_budget"] else "RuntimeFailedConfig"
            cache[key] = entry
            continue
        blocks_per_sm = min(32, 2048 // threads, 65536 // max(1, int(regs * threads)),
                            int(c["smem_budget"] // smem) if smem else 32)
        occupancy = min(1.0, blocks_per_sm * threads / 2048)
        occ_eff = 0.25 + 0.75 * math.sqrt(max(occupancy, 1e-3))
        warp_eff = cfg["block_size_x"] / (32 * math.ceil(cfg["block_size_x"] / 32))
        traffic = 1.0 / (1.0 + c["reuse"] * (math.log2(tiles) + 1)) if tiles > 1 else 1.0
        if cfg["use_shared"]:
            traffic /= c["shared_gain"]
        odd = c["odd_tile_penalty"] if 3 in (cfg["tile_size_x"], cfg["tile_size_y"]) else 1.0
        unroll = 1.0 / c["unroll_gain"] if cfg["loop_unroll"] else 1.0
        time_ms = c["work"] * traffic * odd * unroll / (occ_eff * warp_eff)
        samples = time_ms * np.exp(noise_rng.normal(0, sigma, repeats))
        entry["time"] = float(np.mean(samples))
        entry["times"] = [float(x) for x in samples]
        cache[key] = entry
    return {
        "device_name": "synthetic", "kernel_name": f"synthetic_tiled_kernel_{seed}",
        "problem_size": [4096, 4096], "tune_params_keys": keys, "tune_params": KERNEL_PARAMS,
        "objective": "time", "cache": cache,
    }


def kernel_surface(seed: int) -> Surface:
    return surface_from_kernel_tuner(kernel_cache(seed), name=f"synthetic-kernel-{seed}")
