"""Decode through CUDA graphs: the whole one-token step captured once, replayed per token.

One decode step of an XLSTM (embedding, every block's projections, cells, norms and FFN,
the LM head and the greedy pick) is recorded into one torch.cuda.CUDAGraph and replayed
for each new token, so the GPU runs it without a launch from Python per kernel.

- The forward is kernels.fastpath.FastModel (fused weights and fused elementwise ops).
- The state lives in static buffers: each mLSTM layer's C is updated in place by the
  decode-step kernel; n and m are read from one buffer and written to another (every
  program of a head reads the old values), and one copy per step commits them; sLSTM
  states are copied back into theirs. Nothing is reallocated, so capture holds.
- The knobs still shape the work: the heads are cut into bands of heads_per_band (one
  step-kernel launch per band) and the bands are spread over min(workers, bands) side
  streams, forked from and joined back to the capture stream with events inside the
  capture, so the graph holds that many independent branches. band_stream_plan is that
  assignment; counters report it per replayed step, as a scheduler reports a decode call.
- The step writes its greedy pick (argmax of the last logits) into the static token
  buffer: generate() replays the graph n times without a host round trip.

Where graphs do not exist (CPU, MPS) or capture fails, make_decoder returns an
EagerDecoder (the model through its scheduler, as before) and says why in .reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.fastpath import FastModel
from schedulers.counters import CounterBook, Counters
from schedulers.plan import Knobs, make_plan


class GraphsUnavailable(RuntimeError):
    """CUDA graphs cannot run here; the message says why."""


def graphs_unavailable(device: torch.device | str) -> str | None:
    """None where a CUDA-graph decode can run on `device`, else the reason."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; on {device.type} the decode step runs eagerly"
    if not torch.cuda.is_available():
        return "CUDA is not available in this process; the decode step runs eagerly"
    return None


# ----------------------------------------------------------------------------- the band plan


@dataclass(frozen=True)
class StreamPlan:
    """Which heads each step-kernel launch covers and which stream it goes to.

    bands[j] is the head slice of band j; by_stream[w] the bands stream w launches, in
    order. With one stream the bands run on the capture stream itself (no fork/join).
    """

    num_heads: int
    knobs: Knobs
    bands: tuple[slice, ...]
    by_stream: tuple[tuple[int, ...], ...]

    @property
    def streams(self) -> int:
        return len(self.by_stream)

    @property
    def forks(self) -> bool:
        return self.streams > 1

    def expected_counters(self, cell_calls: int) -> Counters:
        """What `cell_calls` decode cell calls (one per mLSTM layer and token) report."""
        plan = make_plan(self.num_heads, 1, self.knobs)
        return plan.expected_counters(concurrency=self.streams, calls=cell_calls)


def band_stream_plan(num_heads: int, knobs: Knobs) -> StreamPlan:
    """Bands of knobs.heads_per_band heads, dealt round-robin onto min(workers, bands) streams."""
    plan = make_plan(num_heads, 1, knobs)  # validates the knobs against num_heads
    bands = tuple(plan.band_heads(b) for b in range(plan.bands))
    streams = plan.useful_concurrency
    by_stream = tuple(tuple(range(w, plan.bands, streams)) for w in range(streams))
    return StreamPlan(num_heads, knobs, bands, by_stream)


# ----------------------------------------------------------------------------- static state


class StaticState:
    """The model's recurrent state in fixed buffers for batch size `batch`.

    mLSTM layer l: C[l] (B, NH, DHQK, DHV) fp32; n and m of all mLSTM layers share one
    (layers, B, NH, DHQK + 1) buffer `nm` (m in the last column) plus its successor
    `nm_next`, so committing a step is one copy. sLSTM block b: slstm[b] = (y, c, n, m).
    """

    def __init__(self, config, batch: int, device: torch.device):
        self.config = config
        self.batch = batch
        self.mlstm_index = {b: j for j, b in enumerate(config.mlstm_blocks)}
        NH, DK, DV = config.num_heads, config.qk_head_dim, config.v_head_dim
        layers = len(config.mlstm_blocks)
        f32 = dict(device=device, dtype=torch.float32)
        self.C = torch.zeros(layers, batch, NH, DK, DV, **f32)
        self.nm = torch.zeros(layers, batch, NH, DK + 1, **f32)
        self.nm_next = torch.zeros_like(self.nm)
        DH = config.slstm_head_dim
        self.slstm = {b: tuple(torch.zeros(batch, NH, DH, **f32) for _ in range(4)) for b in config.slstm_at}

    def mlstm(self, block: int, *, nxt: bool = False):
        """(C, n, m) views of block's buffers (n, m from nm_next when nxt)."""
        j = self.mlstm_index[block]
        nm = (self.nm_next if nxt else self.nm)[j]
        DK = self.config.qk_head_dim
        return self.C[j], nm[..., :DK], nm[..., DK:]

    def zero_(self) -> None:
        for t in (self.C, self.nm, self.nm_next, *(s for st in self.slstm.values() for s in st)):
            t.zero_()

    @torch.no_grad()
    def load(self, state: list | None, materialize=None) -> None:
        """Copy a model-format state (XLSTM.forward's list; None entries: the empty state)
        in. materialize turns a scheduler's state handle into (C, n, m) tensors."""
        self.zero_()
        if state is None:
            return
        if len(state) != self.config.num_blocks:
            raise ValueError(f"state has {len(state)} entries, the model has {self.config.num_blocks} blocks")
        for b, entry in enumerate(state):
            if entry is None:
                continue
            if b in self.mlstm_index:
                tensors = materialize(entry) if materialize is not None else entry
                for dst, src in zip(self.mlstm(b), tensors):
                    dst.copy_(src.reshape(dst.shape))
            else:
                for dst, src in zip(self.slstm[b], entry):
                    dst.copy_(src)

    def as_model_state(self) -> list:
        """The state in XLSTM.forward's format, as views of the live buffers (clone to keep)."""
        out = []
        for b in range(self.config.num_blocks):
            out.append(self.mlstm(b) if b in self.mlstm_index else self.slstm[b])
        return out


# ----------------------------------------------------------------------------- the step


class StaticDecoder:
    """The one-token decode step over static buffers, run eagerly (any device).

    GraphDecoder captures exactly this step. Use: load_state(state) after a prefill, then
    step(token) -> logits (B, 1, vocab) or generate(token, n) -> (B, n) greedy tokens.
    """

    kind = "static-eager"

    def __init__(self, model, knobs: Knobs, *, batch: int = 1, ops=None, fast=None):
        self.model = model
        self.config = model.config
        self.knobs = knobs
        self.fast = fast if fast is not None else FastModel(model, ops=ops)
        self.ops = self.fast.ops
        self.device = model.device
        self.plan = band_stream_plan(self.config.num_heads, knobs)
        self.state_buffers = StaticState(self.config, batch, self.device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        NH, DV = self.config.num_heads, self.config.v_head_dim
        self.h = torch.empty(batch, NH, DV, dtype=model.dtype, device=self.device)
        self.streams = self._make_streams()
        self._book = CounterBook()
        self._step_counters = Counters()
        self.reason: str | None = None

    def _make_streams(self):
        if self.plan.forks and self.device.type == "cuda":
            return [torch.cuda.Stream(device=self.device) for _ in range(self.plan.streams)]
        return None

    # -- counters -----------------------------------------------------------------------
    @property
    def concurrency(self) -> int:
        """Band launches that can run at once: the side streams, or 1 without them."""
        return self.plan.streams if self.streams is not None else 1

    def expected_counters(self, steps: int) -> Counters:
        """What `steps` decode steps must add to the counters."""
        plan = make_plan(self.config.num_heads, 1, self.knobs)
        calls = steps * len(self.config.mlstm_blocks)
        return plan.expected_counters(concurrency=self.concurrency, calls=calls)

    @property
    def counters(self) -> Counters:
        return self._book.snapshot()

    def reset_counters(self) -> None:
        self._book.reset()

    # -- state --------------------------------------------------------------------------
    def load_state(self, state: list | None, materialize=None) -> None:
        self.state_buffers.load(state, materialize)

    def state(self) -> list:
        return self.state_buffers.as_model_state()

    # -- the step -----------------------------------------------------------------------
    def _cell(self, b: int, q, k, v, i_pre, f_pre, counted: list) -> None:
        """Every band's step kernel for mLSTM block b, forked over the side streams."""
        C, n, m = self.state_buffers.mlstm(b)
        _, n_next, m_next = self.state_buffers.mlstm(b, nxt=True)
        cap = self.config.gate_soft_cap
        q1, k1, v1, i1, f1 = q[:, :, 0], k[:, :, 0], v[:, :, 0], i_pre[:, 0], f_pre[:, 0]

        def launch(band: int) -> None:
            hs = self.plan.bands[band]
            self.ops.mlstm_step_into(q1[:, hs], k1[:, hs], v1[:, hs], i1[:, hs], f1[:, hs], cap,
                                     C[:, hs], n[:, hs], m[:, hs], n_next[:, hs], m_next[:, hs], self.h[:, hs])
            counted.append(band)

        if self.streams is None:
            for stream_bands in self.plan.by_stream:
                for band in stream_bands:
                    launch(band)
            return
        main = torch.cuda.current_stream(self.device)
        fork = torch.cuda.Event()
        fork.record(main)
        joins = []
        for stream, stream_bands in zip(self.streams, self.plan.by_stream):
            stream.wait_event(fork)
            with torch.cuda.stream(stream):
                for band in stream_bands:
                    launch(band)
                done = torch.cuda.Event()
                done.record(stream)
            joins.append(done)
        for done in joins:
            main.wait_event(done)

    def _body(self) -> tuple[torch.Tensor, Counters]:
        """One step from self.token and the static state; returns the logits and what ran."""
        fast = self.fast
        x = fast.embed(self.token)
        launched: list[int] = []
        cell_calls = 0
        for b, block in enumerate(self.model.blocks):
            if block.kind == "mlstm":
                q, k, v, i_pre, f_pre, o_pre = fast.split(fast.mlstm_in(b, x))
                self._cell(b, q, k, v, i_pre, f_pre, launched)
                cell_calls += 1
                x = fast.mlstm_out(b, x, self.h.unsqueeze(1), o_pre)
            else:
                static = self.state_buffers.slstm[b]
                x, new = fast.slstm_block(b, x, static)
                for dst, src in zip(static, new):
                    dst.copy_(src)
            x = fast.ffn(b, x)
        logits = fast.head(x)
        self.state_buffers.nm.copy_(self.state_buffers.nm_next)  # commit n, m of every layer
        self.token.copy_(logits[:, -1].argmax(-1, keepdim=True))  # the greedy pick feeds the next step
        bands = len(self.plan.bands)
        ran = Counters(kernel_calls=len(launched), bands=bands * cell_calls, chunks=cell_calls,
                       tasks=len(launched), peak_concurrency=self.concurrency if cell_calls else 0,
                       ordering_violations=0)
        return logits, ran

    @torch.no_grad()
    def _run_step(self) -> torch.Tensor:
        logits, ran = self._body()
        self._book.add(ran)
        return logits

    def _set_token(self, token) -> None:
        token = torch.as_tensor(token, device=self.device).reshape(self.token.shape)
        self.token.copy_(token)

    def step(self, token) -> torch.Tensor:
        """Advance by one token (B, 1); returns logits (B, 1, vocab) fp32. With graphs the
        tensor is the graph's static output: clone it to keep it past the next step."""
        self._set_token(token)
        return self._run_step()

    def generate(self, token, n: int) -> torch.Tensor:
        """Feed `token` (B, 1), then greedily n tokens; returns them (B, n). No host sync."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self._set_token(token)
        out = torch.empty(self.token.shape[0], n, dtype=torch.long, device=self.device)
        for t in range(n):
            self._run_step()
            out[:, t : t + 1].copy_(self.token)
        return out


class GraphDecoder(StaticDecoder):
    """StaticDecoder's step captured in one CUDA graph (CUDA only; see the module docstring)."""

    kind = "cuda-graph"

    def __init__(self, model, knobs: Knobs, *, batch: int = 1, ops=None, fast=None, warmup: int = 2):
        reason = graphs_unavailable(model.device)
        if reason is not None:
            raise GraphsUnavailable(reason)
        super().__init__(model, knobs, batch=batch, ops=ops, fast=fast)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad():
            # Warm up off the default stream (Triton compiles, cuBLAS picks its kernels),
            # then capture; the warm-up's effect on the state is wiped.
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup)):
                    self._body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(self.graph):
                self.logits, self._step_counters = self._body()
        self.state_buffers.zero_()
        self.token.zero_()

    def _run_step(self) -> torch.Tensor:
        self.graph.replay()
        self._book.add(self._step_counters)
        return self.logits


class EagerDecoder:
    """The normal path: XLSTM.forward one token at a time, cells through the model's
    cell runner (a scheduler). Same interface as StaticDecoder."""

    kind = "eager"

    def __init__(self, model, scheduler=None, *, reason: str | None = None):
        self.model = model
        self.scheduler = scheduler if scheduler is not None else model.cell_runner
        self.reason = reason
        self.device = model.device
        self._state: list | None = None

    @property
    def counters(self) -> Counters:
        return self.scheduler.counters

    def reset_counters(self) -> None:
        self.scheduler.reset_counters()

    def load_state(self, state: list | None, materialize=None) -> None:
        self._state = state  # the scheduler reads its own handles

    def state(self) -> list | None:
        return self._state

    @torch.no_grad()
    def step(self, token) -> torch.Tensor:
        token = torch.as_tensor(token, device=self.device).reshape(-1, 1)
        previous = self.model.cell_runner
        self.model.cell_runner = self.scheduler
        try:
            logits, self._state = self.model(token, self._state)
        finally:
            self.model.cell_runner = previous
        return logits

    def generate(self, token, n: int) -> torch.Tensor:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        token = torch.as_tensor(token, device=self.device).reshape(-1, 1)
        out = []
        for _ in range(n):
            token = self.step(token)[:, -1].argmax(-1, keepdim=True)
            out.append(token)
        return torch.cat(out, dim=1)


def make_decoder(model, scheduler, *, batch: int = 1, graphs: bool = True, ops=None, fast=None):
    """A GraphDecoder on CUDA (bands and streams from scheduler.knobs), else an
    EagerDecoder through `scheduler` whose .reason says why graphs are not used.
    fast: a kernels.fastpath.FastModel of `model` to reuse."""
    reason = "graphs disabled by the caller" if not graphs else graphs_unavailable(model.device)
    if reason is None:
        try:
            return GraphDecoder(model, scheduler.knobs, batch=batch, ops=ops, fast=fast)
        except Exception as exc:  # capture is an optional layer: fall back, never fail the run
            reason = f"CUDA graph capture failed ({type(exc).__name__}: {exc}); the decode step runs eagerly"
    return EagerDecoder(model, scheduler, reason=reason)
