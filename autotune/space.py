"""The search space: the valid configs, enumerated before any search.

`DiscreteSpace` is a finite set of valid configs over knobs with ordered value lists;
strategies only ever see this. `SearchSpace` builds one for the xLSTM scheduling knobs,
and any kernel knobs beside them, from value lists and the constraints the scheduler's
plan and the kernel registry impose, so constraints are applied before search and never
discovered by failing trials.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from autotune.defaults import builtin_default
from autotune.names import BACKENDS, KERNEL_KNOBS, KNOBS

# kernels.registry is imported where kernel knobs are checked: it loads torch, which a
# space of scheduling knobs alone (replay, the strategies) never needs.

# Canonical knob order: trials suggest knobs in this order; configs enumerate in it.
KNOB_ORDER = ("backend", *KNOBS, *KERNEL_KNOBS)
INTEGER_KNOBS = (*KNOBS, *KERNEL_KNOBS)
REQUIRED_KNOBS = KNOBS


class SpaceError(ValueError):
    """A value list or constraint set that leaves no valid config, or a malformed knob."""


def _is_ordered(values: Sequence[Any]) -> bool:
    """Numeric knobs are ordered (neighbours are adjacent values); others are categorical."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


class DiscreteSpace:
    """A finite set of valid configs over knobs with value lists.

    configs keep a deterministic order (the caller's); `coords[i, k]` is the position of
    config i's value for knob k in `values[knob_names[k]]`, which is what the strategies
    compute on (ordinal distance, neighbour steps, per-value statistics).
    """

    def __init__(self, values: Mapping[str, Sequence[Any]], configs: Iterable[Mapping[str, Any]]):
        self.knob_names: tuple[str, ...] = tuple(values)
        if not self.knob_names:
            raise SpaceError("a search space needs at least one knob")
        self.values: dict[str, list[Any]] = {k: list(v) for k, v in values.items()}
        for knob, vals in self.values.items():
            if not vals:
                raise SpaceError(f"knob {knob!r} has an empty value list")
            if len(set(vals)) != len(vals):
                raise SpaceError(f"knob {knob!r} lists a value twice: {vals}")
        self.ordered: tuple[bool, ...] = tuple(_is_ordered(self.values[k]) for k in self.knob_names)
        self._position = [{v: j for j, v in enumerate(self.values[k])} for k in self.knob_names]

        self.configs: list[dict[str, Any]] = []
        self._index: dict[tuple, int] = {}
        rows = []
        for cfg in configs:
            key = self.key(cfg)
            if key in self._index:
                continue
            try:
                row = [pos[v] for pos, v in zip(self._position, key)]
            except KeyError:
                raise SpaceError(f"config {dict(cfg)} uses a value outside the knob's value list") from None
            self._index[key] = len(self.configs)
            self.configs.append(dict(zip(self.knob_names, key)))
            rows.append(row)
        if not self.configs:
            raise SpaceError("no valid config: relax the value lists or the constraints")
        self.coords = np.asarray(rows, dtype=np.int32).reshape(len(rows), len(self.knob_names))
        self.sizes = np.asarray([len(self.values[k]) for k in self.knob_names], dtype=np.int32)
        self._neighbours: list[np.ndarray] | None = None
        self._neighbour_matrix: np.ndarray | None = None
        self._unit_coords: np.ndarray | None = None

    # -- lookup ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.configs)

    def key(self, cfg: Mapping[str, Any]) -> tuple:
        """The config as a tuple of values in knob order (raises KeyError on a missing knob)."""
        return tuple(cfg[k] for k in self.knob_names)

    def index(self, cfg: Mapping[str, Any]) -> int | None:
        """Position of cfg in `configs`, or None if it is not a valid config of this space."""
        try:
            return self._index.get(self.key(cfg))
        except (KeyError, TypeError):
            return None

    def __contains__(self, cfg: object) -> bool:
        return isinstance(cfg, Mapping) and self.index(cfg) is not None

    def why_invalid(self, cfg: Mapping[str, Any]) -> str | None:
        """None if cfg is a valid config, else the reason in words."""
        missing = [k for k in self.knob_names if k not in cfg]
        if missing:
            return f"missing knob(s) {', '.join(missing)}"
        extra = [k for k in cfg if k not in self.values]
        if extra:
            return f"unknown knob(s) {', '.join(extra)}; knobs are {', '.join(self.knob_names)}"
        for k in self.knob_names:
            if cfg[k] not in self._position[self.knob_names.index(k)]:
                return f"{k}={cfg[k]!r} is not in its value list {self.values[k]}"
        if self.index(cfg) is None:
            return "not among the valid configs of this space"
        return None

    # -- geometry -------------------------------------------------------------
    def neighbour_indices(self, i: int) -> np.ndarray:
        """Valid configs one step away from config i in exactly one knob.

        For an ordered (numeric) knob a step is to the adjacent value in the list; for a
        categorical knob every other value is one step away.
        """
        if self._neighbours is None:
            self._neighbours = self._build_neighbours()
        return self._neighbours[i]

    def neighbour_matrix(self) -> np.ndarray:
        """All neighbour lists as one (N, D) array padded with N (one past the last config),
        so per-config statistics can be gathered for many configs at once."""
        if self._neighbour_matrix is None:
            lists = [self.neighbour_indices(i) for i in range(len(self))]
            width = max((len(x) for x in lists), default=0)
            mat = np.full((len(self), max(width, 1)), len(self), dtype=np.int64)
            for i, nb in enumerate(lists):
                mat[i, : len(nb)] = nb
            self._neighbour_matrix = mat
        return self._neighbour_matrix

    def neighbours(self, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
        i = self.index(cfg)
        if i is None:
            raise SpaceError(f"{dict(cfg)} is not a valid config: {self.why_invalid(cfg)}")
        return [self.configs[j] for j in self.neighbour_indices(i)]

    def _build_neighbours(self) -> list[np.ndarray]:
        lookup = {tuple(row): i for i, row in enumerate(self.coords.tolist())}
        result = []
        for row in self.coords.tolist():
            found = []
            for k, ordered in enumerate(self.ordered):
                here = row[k]
                steps = (here - 1, here + 1) if ordered else range(int(self.sizes[k]))
                for other in steps:
                    if other == here or not 0 <= other < self.sizes[k]:
                        continue
                    row[k] = other
                    j = lookup.get(tuple(row))
                    if j is not None:
                        found.append(j)
                row[k] = here
            result.append(np.asarray(found, dtype=np.int64))
        return result

    def unit_coords(self) -> np.ndarray:
        """Coordinates for L1 distances: an ordered knob's position scaled to [0, 1]; a
        categorical knob one-hot with 0.5 per column, so a different value counts 1."""
        if self._unit_coords is None:
            cols = []
            for k, ordered in enumerate(self.ordered):
                pos = self.coords[:, k].astype(np.float64)
                if ordered:
                    cols.append((pos / max(1, int(self.sizes[k]) - 1))[:, None])
                else:
                    cols.append(0.5 * (pos[:, None] == np.arange(self.sizes[k])[None, :]))
            self._unit_coords = np.hstack(cols)
        return self._unit_coords

    def distance(self, target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Distance from a coordinate row to each candidate config (indices).

        Ordered knobs count value-list steps scaled to [0, 1] by the list length;
        categorical knobs count 0 or 1. Used to repair a GA child to the nearest config.
        """
        diff = np.abs(self.coords[candidates] - target[None, :]).astype(np.float64)
        span = np.maximum(self.sizes - 1, 1).astype(np.float64)
        ordered = np.asarray(self.ordered)
        diff = np.where(ordered[None, :], diff / span[None, :], (diff > 0).astype(np.float64))
        return diff.sum(axis=1)

    def distributions(self) -> dict[str, CategoricalDistribution]:
        """The Optuna distribution of each knob (what the objective suggests)."""
        return {k: CategoricalDistribution(self.values[k]) for k in self.knob_names}


class SearchSpace(DiscreteSpace):
    """The xLSTM scheduling knobs and the constraints the scheduler's plan imposes.

    values: knob -> value list; knobs workers, heads_per_band, chunk_size, T_inner,
    optionally backend and kernel knobs (names.KERNEL_KNOBS). A config is valid when
    heads_per_band divides num_heads, T_inner divides chunk_size, chunk_size <= context
    and workers <= num_heads / heads_per_band (more workers than bands would idle). Its
    kernel knobs must be declared values the registry admits for the head size `dhqk`;
    and where a T_inner window takes the block kernel, only the defaults of the
    sub-chunk knobs are enumerated (other values would measure the same work twice).
    """

    def __init__(self, values: Mapping[str, Sequence[Any]], num_heads: int, context: int, dhqk: int = 0):
        if not isinstance(num_heads, int) or num_heads < 1:
            raise SpaceError(f"num_heads must be a positive integer, got {num_heads!r}")
        if not isinstance(context, int) or context < 1:
            raise SpaceError(f"context must be a positive integer, got {context!r}")
        self.num_heads = num_heads
        self.context = context
        self.dhqk = dhqk
        clean = _clean_values(values)
        product = (dict(zip(clean, combo)) for combo in itertools.product(*clean.values()))
        valid = [cfg for cfg in product if self._violated(cfg) is None]
        if not valid:
            raise SpaceError(
                f"no valid config for num_heads={num_heads}, context={context} from {clean}: "
                "add heads_per_band values that divide the head count, chunk_size values "
                "<= the context, and T_inner values that divide a chunk_size"
            )
        super().__init__(clean, valid)

    def _violated(self, cfg: Mapping[str, Any]) -> str | None:
        hpb, chunk, t_inner, workers = cfg["heads_per_band"], cfg["chunk_size"], cfg["T_inner"], cfg["workers"]
        if self.num_heads % hpb:
            return f"heads_per_band={hpb} does not divide num_heads={self.num_heads}"
        if chunk % t_inner:
            return f"T_inner={t_inner} does not divide chunk_size={chunk}"
        if chunk > self.context:
            return f"chunk_size={chunk} exceeds the context length {self.context}"
        bands = self.num_heads // hpb
        if workers > bands:
            return f"workers={workers} exceeds the number of bands {bands} (num_heads / heads_per_band)"
        kernel = {k: cfg[k] for k in KERNEL_KNOBS if k in cfg}
        if kernel:
            from kernels.registry import why_no_effect, why_params_invalid

            return why_params_invalid(kernel, {"dhqk": self.dhqk}) or why_no_effect(kernel, t_inner)
        return None

    def why_invalid(self, cfg: Mapping[str, Any]) -> str | None:
        reason = super().why_invalid(cfg)
        if reason is None or reason != "not among the valid configs of this space":
            return reason
        return self._violated(cfg)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def impossible_values(values: Mapping[str, Sequence[int]], num_heads: int,
                      contexts: Sequence[int], dhqk: int = 0) -> dict[str, tuple[list[int], str]]:
    """Knob values that no valid config can use at any of the contexts, whatever the
    other knobs, with the rule they break and the values that would work:
    {knob: (bad, explanation)}. (A `workers` value above the bands of every listed
    heads_per_band is left alone: it is a choice of lists, not of one value.)

    The tuner drops such values when it enumerates the space, so without this check a
    typo like T_inner = [3, 5] would tune the baseline's value only, without a word.
    """
    found: dict[str, tuple[list[int], str]] = _impossible_kernel_values(values, dhqk, contexts)
    heads = _divisors(num_heads)
    bad = [v for v in values["heads_per_band"] if v not in heads]
    if bad:
        found["heads_per_band"] = (bad, f"heads_per_band must divide the model's {num_heads} heads; "
                                        f"valid values: {', '.join(map(str, heads))}")
    longest = max(contexts)
    bad = [v for v in values["chunk_size"] if v > longest]
    if bad:
        found["chunk_size"] = (bad, f"chunk_size must be at most the longest context ({longest})")
    # The tuner adds each context's baseline chunk to the list, so T_inner may divide those.
    chunks = {c for c in values["chunk_size"] if c <= longest}
    chunks |= {builtin_default(num_heads, c)["chunk_size"] for c in contexts}
    bad = [v for v in values["T_inner"] if not any(c % v == 0 for c in chunks)]
    if bad:
        fitting = sorted({d for c in chunks for d in _divisors(c)})
        found["T_inner"] = (bad, f"T_inner must divide a chunk_size ({', '.join(map(str, sorted(chunks)))}); "
                                 f"valid values: {', '.join(map(str, fitting))}")
    return found


def _impossible_kernel_values(values: Mapping[str, Sequence[int]], dhqk: int,
                              contexts: Sequence[int]) -> dict[str, tuple[list[int], str]]:
    """Kernel knob values the registry never admits for this head size, and sub-chunks
    no window can reach (every listed T_inner and context under MIN_SUB_CHUNKS of them)."""
    listed = [k for k in KERNEL_KNOBS if k in values]
    if not listed:
        return {}
    from kernels.registry import MIN_SUB_CHUNKS, SUB_CHUNK_PARAMS, kernel_params, why_params_invalid

    declared = kernel_params()
    found = {}
    for knob in listed:
        bad = [v for v in values[knob] if why_params_invalid({knob: v}, {"dhqk": dhqk})]
        if bad:
            ok = [v for v in declared[knob].values if not why_params_invalid({knob: v}, {"dhqk": dhqk})]
            found[knob] = (bad, f"{why_params_invalid({knob: bad[0]}, {'dhqk': dhqk})}; "
                                f"valid values: {', '.join(map(str, ok))}")
    # The sub-chunk knobs change the work only in windows of MIN_SUB_CHUNKS sub-chunks.
    longest = min(max(values.get("T_inner", [0])), max(contexts))
    smallest = min(values.get("sub_chunk", [declared["sub_chunk"].default]))
    for knob in SUB_CHUNK_PARAMS:
        if knob in listed and knob not in found:
            reach = (lambda v: MIN_SUB_CHUNKS * v <= longest) if knob == "sub_chunk" else \
                (lambda v: v == declared[knob].default or MIN_SUB_CHUNKS * smallest <= longest)
            bad = [v for v in values[knob] if not reach(v)]
            if bad:
                found[knob] = (bad, f"it changes the work only in windows of {MIN_SUB_CHUNKS} sub-chunks "
                                    f"({MIN_SUB_CHUNKS} x sub_chunk <= T_inner), and the longest window is {longest} "
                                    f"steps; list a T_inner of at least "
                                    f"{MIN_SUB_CHUNKS * (min(bad) if knob == 'sub_chunk' else smallest)}")
    return found


def _clean_values(values: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Validate knob names and values; numeric lists sorted ascending (order = neighbourhood)."""
    unknown = [k for k in values if k not in KNOB_ORDER]
    if unknown:
        raise SpaceError(f"unknown knob(s) {', '.join(map(repr, unknown))}; knobs are {', '.join(KNOB_ORDER)}")
    missing = [k for k in REQUIRED_KNOBS if k not in values]
    if missing:
        raise SpaceError(f"missing value list for knob(s) {', '.join(missing)}")
    clean: dict[str, list[Any]] = {}
    for knob in KNOB_ORDER:
        if knob not in values:
            continue
        raw = values[knob]
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or not raw:
            raise SpaceError(f"knob {knob!r} needs a non-empty list of values, got {raw!r}")
        if knob == "backend":
            bad = [v for v in raw if v not in BACKENDS]
            if bad:
                raise SpaceError(f"backend value(s) {bad} unknown; backends are {', '.join(BACKENDS)}")
            clean[knob] = list(dict.fromkeys(raw))
        else:
            bad = [v for v in raw if not isinstance(v, int) or isinstance(v, bool) or v < 1]
            if bad:
                raise SpaceError(f"knob {knob!r} takes positive integers, got {bad}")
            clean[knob] = sorted(set(raw))
    return clean
