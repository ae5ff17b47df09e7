"""The official xLSTM model (xlstm 2.0.6 xLSTMLarge) built and timed for compare-official.

The official packages are imported only here; without them the command says how to
install them. Chunk size, prefill kernel and step kernel live in each layer's mLSTM
backend, which holds no weights, so switching them rebuilds only the backends; the
weight layout ("single" or "fused") needs a new model.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import subprocess
import sys
import time

import torch

from autotune.compare_official_variants import decode_grid, prefill_grid
from autotune.errors import UserError

# xlstm and mlstm_kernels are optional: they are imported where used, so that without
# them the command says how to install them.

OFFICIAL_PACKAGES = "xlstm==2.0.6 mlstm_kernels==2.0.6"
# Some official Triton kernels kill the process on some GPUs (not an exception): each
# prefill kernel is first run on small inputs in a child process.
PROBE_TIMEOUT_S = 180


def official_modules():
    """The official xLSTMLarge classes, or a UserError saying how to install them."""
    try:
        from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig
    except ImportError as exc:
        raise UserError(f"the official xLSTM packages are not importable ({exc}); "
                        f"install them for this comparison: pip install {OFFICIAL_PACKAGES}") from None
    return xLSTMLarge, xLSTMLargeConfig


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def tokens(vocab: int, batch: int, length: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def build_official(config, *, weight_mode: str, chunkwise_kernel: str, chunk_size: int, step_kernel: str,
                   sequence_kernel: str, seed: int, device):
    """xLSTMLarge with our ModelConfig's architecture, random bf16 weights on `device`."""
    xLSTMLarge, xLSTMLargeConfig = official_modules()
    cfg = xLSTMLargeConfig(
        embedding_dim=config.embedding_dim, num_heads=config.num_heads, num_blocks=config.num_blocks,
        vocab_size=config.vocab_size, use_bias=False, norm_eps=config.norm_eps,
        qk_dim_factor=config.qk_dim_factor, v_dim_factor=config.v_dim_factor,
        gate_soft_cap=config.gate_soft_cap, output_logit_soft_cap=config.logit_soft_cap,
        ffn_proj_factor=config.ffn_proj_factor, ffn_round_up_to_multiple_of=config.ffn_round_up_to,
        mode="inference", chunkwise_kernel=chunkwise_kernel, sequence_kernel=sequence_kernel,
        step_kernel=step_kernel, chunk_size=chunk_size, return_last_states=True,
        autocast_kernel_dtype="bfloat16", inference_state_dtype="float32", weight_mode=weight_mode,
    )
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly on the GPU
    try:
        with torch.device(device):
            model = xLSTMLarge(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    return model


def set_backend(model, **changes) -> dict:
    """Rebuild every mLSTM layer's backend with `changes` (chunk_size, chunkwise_kernel,
    step_kernel); returns the backend settings now in force."""
    from mlstm_kernels.torch.backend_module import mLSTMBackend

    config = None
    for module in model.modules():
        backend = getattr(module, "mlstm_backend", None)
        if isinstance(backend, mLSTMBackend):
            config = dataclasses.replace(backend.config, **changes)
            module.mlstm_backend = mLSTMBackend(config)
    if config is None:
        raise RuntimeError("the official model has no mLSTM backends to configure")
    return {k: getattr(config, k) for k in ("chunkwise_kernel", "chunk_size", "step_kernel", "sequence_kernel")}


_PROBE_SCRIPT = """
import sys, torch
from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig
backend = mLSTMBackend(mLSTMBackendConfig(
    chunkwise_kernel=sys.argv[1], sequence_kernel="native_sequence__native", step_kernel="native",
    mode="inference", chunk_size=int(sys.argv[2]), return_last_states=True,
    autocast_kernel_dtype="bfloat16", inference_state_dtype="float32"))
B, NH, S, DQK, DV = 1, *(int(x) for x in sys.argv[3:7])
g = torch.Generator(device="cuda").manual_seed(0)
q, k = (torch.randn(B, NH, S, DQK, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
v = torch.randn(B, NH, S, DV, device="cuda", generator=g, dtype=torch.bfloat16)
i, f = (torch.randn(B, NH, S, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
h = backend(q, k, v, i, f)[0]
torch.cuda.synchronize()
assert torch.isfinite(h.float()).all(), "non-finite output"
print("ok")
"""


def probe_chunkwise_kernels(cases, num_heads: int, head_dims: tuple[int, int]) -> dict:
    """{(kernel name, chunk size, length): None when the official prefill kernel runs on
    inputs of the model's shape (batch 1) in a child process, else why not (its error, or
    how the child died)}. The children run at once."""
    procs = {pair: subprocess.Popen([sys.executable, "-c", _PROBE_SCRIPT, pair[0], str(pair[1]), str(num_heads),
                                     str(pair[2]), str(head_dims[0]), str(head_dims[1])],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for pair in cases}
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    out = {}
    for pair, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[pair] = f"probe timed out after {PROBE_TIMEOUT_S} s"
            continue
        out[pair] = None if proc.returncode == 0 and stdout.strip().endswith("ok") else _why(proc.returncode, stderr)
    return out


def _why(returncode: int, stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "(no output)"
    how = f"exit code {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    return f"{how}: {last}"


def measure_prefill(model, vocab: int, length: int, repeats: int, seed: int, device) -> dict:
    toks = tokens(vocab, 1, length, seed, device)
    with torch.no_grad():
        model(toks)  # warm-up: Triton compiles here
        samples = timed(lambda: model(toks), repeats)
    return {"samples_s": samples, "tok_s": length / statistics.median(samples)}


def measure_decode(model, vocab: int, *, batch: int = 1, prompt_len: int, new_tokens: int, repeats: int,
                   seed: int, device, compiled: bool = False, forward=None) -> dict:
    """Greedy decode tok/s (all sequences of the batch counted) after a prompt; the
    compiled form is torch.compile(mode='reduce-overhead') (or `forward`, one already
    compiled), compiled in the warm-up."""
    prompt = tokens(vocab, batch, prompt_len, seed, device)
    if forward is None:
        forward = torch.compile(model, mode="reduce-overhead") if compiled else model
    samples = []
    with torch.no_grad():
        logits, state = model(prompt)
        first = logits[:, -1:].argmax(-1)

        def run(start_state):
            token, st = first, start_state
            for _ in range(new_tokens):
                logits, st = forward(token, st)
                token = logits[:, -1:].argmax(-1)

        def fresh():  # the official backbone updates states in place
            return {k: tuple(t.clone() for t in v) for k, v in state.items()}

        start = time.perf_counter()
        run(fresh())  # warm-up (compilation when compiled)
        sync()
        warmup_s = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            st = fresh()
            samples += timed(lambda: run(st), 1)
    peak = torch.cuda.max_memory_allocated(device)
    return {"samples_s": samples, "tok_s": batch * new_tokens / statistics.median(samples),
            "warmup_s": warmup_s, "peak_bytes": peak}


def measure_copy_bandwidth(device, nbytes: int = 4 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, bytes read plus bytes written (median)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = timed(lambda: dst.copy_(src), repeats)
    del src, dst
    free()
    return nbytes / statistics.median(samples)


def reset_compiled() -> None:
    """Drop compiled graphs (and the CUDA graph pools holding their memory)."""
    torch._dynamo.reset()
    free()


def measure_official(config, plan, *, contexts, repeats: int, decode_prompt: int, new_tokens: int, seed: int,
                     device, results, progress, checkpoint) -> None:
    """Every official variant of `plan` (an OfficialPlan) into `results` (VariantResults):
    prefill at each context length, then batch-1 decode; each weight layout is built once.
    A kernel/chunk pair whose probe fails is recorded as crashed and not run in-process."""
    vocab = config.vocab_size
    head_dims = (config.qk_dim // config.num_heads, config.v_dim // config.num_heads)
    cases = [(k, c, L) for k in plan.chunkwise_kernels for c in plan.chunk_sizes for L in contexts]
    progress(f"official: probing {len(cases)} prefill kernel/chunk/length cases in child processes")
    probes = probe_chunkwise_kernels(cases, config.num_heads, head_dims)
    decodes = decode_grid(plan.weight_modes, plan.step_kernels, plan.compiled_step_kernels,
                          plan.compiled_weight_modes)
    for weight_mode in plan.weight_modes:
        progress(f"official: building xLSTMLarge weight_mode={weight_mode} (bf16, random weights)")
        model = build_official(config, weight_mode=weight_mode, chunkwise_kernel=cases[0][0],
                               chunk_size=cases[0][1], step_kernel=plan.step_kernels[0],
                               sequence_kernel=plan.sequence_kernel, seed=seed, device=device)
        runnable = None
        for variant in prefill_grid([weight_mode], plan.chunkwise_kernels, plan.chunk_sizes):
            for L in contexts:
                why = probes[(variant.chunkwise_kernel, variant.chunk_size, L)]
                if why is not None:
                    results.add(f"prefill:{L}", variant, error=f"probe: {why}")
                    continue
                progress(f"official: prefill L={L} {variant.name}")

                def prefill():  # the backend switch inside: an unknown kernel is this variant's error
                    set_backend(model, chunkwise_kernel=variant.chunkwise_kernel, chunk_size=variant.chunk_size)
                    return measure_prefill(model, vocab, L, repeats, seed, device)

                entry = results.measure(f"prefill:{L}", variant, prefill, on_error=lambda exc: free())
                runnable = runnable or ("tok_s" in entry and variant)
            checkpoint()
        if runnable:  # the decode prompt's prefill runs on a kernel that ran
            set_backend(model, chunkwise_kernel=runnable.chunkwise_kernel, chunk_size=runnable.chunk_size)
        for variant in (d for d in decodes if d.weight_mode == weight_mode):
            progress(f"official: decode {new_tokens} tokens {variant.name}")

            def decode():
                set_backend(model, step_kernel=variant.step_kernel)
                return measure_decode(model, vocab, prompt_len=decode_prompt, new_tokens=new_tokens,
                                      repeats=repeats, seed=seed, device=device, compiled=variant.compiled)

            results.measure("decode:b1", variant, decode, on_error=lambda exc: reset_compiled())
            if variant.compiled:
                reset_compiled()
            checkpoint()
        del model
        free()


def measure_official_batches(config, variant, prefill_settings: dict, *, batches, repeats: int, decode_prompt: int,
                             new_tokens: int, seed: int, device, sequence_kernel: str, results, progress,
                             checkpoint) -> None:
    """Decode of the official `variant` (a DecodeVariant, its best at batch 1) at each batch,
    through one compiled forward when compiled (torch marks the batch dynamic after the
    second size, so later sizes reuse its graph)."""
    model = build_official(config, weight_mode=variant.weight_mode, step_kernel=variant.step_kernel,
                           sequence_kernel=sequence_kernel, seed=seed, device=device, **prefill_settings)
    forward = torch.compile(model, mode="reduce-overhead") if variant.compiled else model
    for batch in batches:
        progress(f"official: decode batch {batch} {variant.name}")
        results.measure(f"decode:b{batch}", variant, lambda: measure_decode(
            model, config.vocab_size, batch=batch, prompt_len=decode_prompt, new_tokens=new_tokens,
            repeats=repeats, seed=seed, device=device, forward=forward), on_error=lambda exc: free())
        checkpoint()
    del forward
    reset_compiled()
    del model
    free()
