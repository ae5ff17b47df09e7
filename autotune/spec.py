"""Study spec: a TOML file under studies/ read into typed dataclasses.

Every key has a default except `[model] shape` and `[workload] contexts`. An unknown
section or key, a wrong type or an out-of-range value is one `SpecError` naming the
file, the key and the fix. The format is documented in the README, "The study spec".
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.names import BACKENDS, DTYPES, KERNEL_KNOBS, KNOBS, STRATEGIES  # noqa: F401  (one source, re-exported)

# kernels, schedulers (torch) and autotune.space (Optuna) are imported inside the checks
# that need them: `best`, `export` and `report` read specs and must start fast.

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"
PROCESSES = ("warm", "fresh")  # [trials] process: what measures the trials
DEFAULT_SPACE = {
    "workers": [1, 2, 4, 8],
    "heads_per_band": [1, 2, 4, 8],
    "chunk_size": [16, 32, 64, 128, 256],
    "T_inner": [4, 8, 16, 32, 64],
}
_DEVICE_RE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")


class SpecError(UserError):
    """The study spec is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    shape: str
    dtype: str = "float32"
    device: str = "auto"
    backends: tuple[str, ...] = ("queued",)
    compile: bool = False  # torch.compile the T_inner kernels (compile time is warm-up)


@dataclass(frozen=True)
class WorkloadSpec:
    contexts: tuple[int, ...]
    new_tokens: int = 32
    batch: int = 1  # the batch one study measures (WorkloadSpec.at_batch)
    batches: tuple[int, ...] = (1,)  # one study per (context, batch)
    repeats: int = 3
    seed: int = 0

    def at_batch(self, batch: int) -> "WorkloadSpec":
        """This workload measured at `batch` sequences (the workload of one study)."""
        return replace(self, batch=batch)


@dataclass(frozen=True)
class ObjectiveSpec:
    w_decode: float = 1.0
    w_prefill: float = 1.0
    w_recall: float = 1.0
    recall_floor: float = 0.0


@dataclass(frozen=True)
class SearchSpec:
    strategy: str = "portfolio"
    n_trials: int | None = 40  # per context length, baseline included
    timeout_s: float | None = None  # wall time of the whole search, all contexts
    seed: int | None = None


@dataclass(frozen=True)
class TrialLimits:
    """Hard time limit of one benchmark child: factor x the baseline's wall time,
    clamped to [min_s, cap_s]; cap_s alone until the baseline has run."""

    timeout_factor: float = 5.0
    timeout_min_s: float = 60.0
    timeout_cap_s: float = 900.0
    process: str = "warm"  # "warm": one worker per slot measures config after config; "fresh": a process per trial


@dataclass(frozen=True)
class ConfirmationSpec:
    top_k: int = 3
    repeats: int = 8
    alpha: float = 0.05
    processes: int = 2  # benchmark processes per config; the repeats are split among them


@dataclass(frozen=True)
class StudySpec:
    model: ModelSpec
    workload: WorkloadSpec
    space: dict[str, tuple[int, ...]]
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    trials: TrialLimits = field(default_factory=TrialLimits)
    confirmation: ConfirmationSpec = field(default_factory=ConfirmationSpec)
    storage: str = DEFAULT_STORAGE
    path: str = "<spec>"
    # [space.kernel]: kernel knob -> value list (kernels.registry); empty: the kernels' defaults
    kernel_space: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, shaped as the TOML file (parse_spec reads it back): kernel
        knobs under space.kernel, `batches` only where the spec lists several. Stored on
        each study as user attr 'spec'."""
        data = asdict(self)
        data.pop("path")
        kernel = data.pop("kernel_space")
        if kernel:
            data["space"]["kernel"] = kernel
        workload = data["workload"]
        workload.pop("batch" if len(self.workload.batches) > 1 else "batches")
        return _jsonable(data)

    def identity(self) -> dict[str, Any]:
        """What must not change while a study is resumed: anything that changes what a
        measurement or a score means. Budget, strategy, limits and storage may change."""
        data = _jsonable(asdict(self))
        identity = {
            "model": {k: data["model"][k] for k in ("shape", "dtype", "compile")},
            # contexts and batches name studies; each study's own batch is in `batch`
            "workload": {k: v for k, v in data["workload"].items() if k not in ("contexts", "batches")},
            "space": data["space"],
            "objective": data["objective"],
        }
        if self.kernel_space:  # absent when empty: studies of specs without kernel knobs keep their identity
            identity["kernel_space"] = data["kernel_space"]
        return identity


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Reader:
    """Typed access to one TOML table, with errors naming file, section and key."""

    def __init__(self, path: str, section: str | None, table: Any, allowed: tuple[str, ...]):
        self.path, self.section = path, section
        where = f"[{section}]" if section else "the top level"
        if not isinstance(table, dict):
            raise SpecError(f"{path}: [{section}] must be a table (a `[{section}]` header with keys)")
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise SpecError(
                f"{path}: unknown key {self._name(unknown[0])}; "
                f"valid keys in {where}: {', '.join(allowed)}"
            )
        self.table = table

    def _name(self, key: str) -> str:
        return f"[{self.section}] {key}" if self.section else key

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"{self.path}: {self._name(key)}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.table

    def integer(self, key: str, default: Any, *, minimum: int | None = None) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any, *, minimum: float | None = None,
              maximum: float | None = None, exclusive_min: bool = False) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.fail(key, f"expected a number, got {value!r}")
        value = float(value)
        if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
            raise self.fail(key, f"must be {'>' if exclusive_min else '>='} {minimum:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be <= {maximum:g}, got {value:g}")
        return value

    def choice(self, key: str, default: Any, choices: tuple[str, ...]) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if value not in choices:
            raise self.fail(key, f"expected one of {', '.join(map(repr, choices))}; got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def string(self, key: str, default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def int_list(self, key: str, default: Any, *, minimum: int = 1) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(key, f"expected a non-empty list of integers, e.g. [1, 2, 4]; got {value!r}")
        bad = [v for v in value if v < minimum]
        if bad:
            raise self.fail(key, f"values must be >= {minimum}, got {bad[0]}")
        if len(set(value)) != len(value):
            raise self.fail(key, f"values must be unique, got {value}")
        return tuple(value)

    def str_list(self, key: str, default: Any, choices: tuple[str, ...]) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"expected a non-empty list, e.g. {list(choices[:1])}; got {value!r}")
        for v in value:
            if v not in choices:
                raise self.fail(key, f"unknown value {v!r}; expected some of {', '.join(map(repr, choices))}")
        if len(set(value)) != len(value):
            raise self.fail(key, f"values must be unique, got {value}")
        return tuple(value)


_SECTIONS = ("model", "workload", "space", "objective", "search", "trials", "confirmation")


def parse_spec(doc: dict[str, Any], path: str = "<spec>") -> StudySpec:
    """Build a StudySpec from a parsed TOML document; raises SpecError."""
    top = _Reader(path, None, doc, _SECTIONS + ("storage",))
    storage = top.string("storage", DEFAULT_STORAGE)

    if "model" not in doc:
        raise SpecError(f"{path}: missing section [model] (it needs at least `shape = \"tiny\"`)")
    m = _Reader(path, "model", doc["model"], ("shape", "dtype", "device", "backends", "compile"))
    if not m.has("shape"):
        raise m.fail("shape", "missing; name a model shape, e.g. shape = \"tiny\"")
    shape = m.string("shape", None)
    _check_shape(shape, m)
    device = m.string("device", "auto")
    if not _DEVICE_RE.match(device):
        raise m.fail("device", f"expected cpu, cuda, cuda:N, mps or auto; got {device!r}")
    model = ModelSpec(
        shape=shape,
        dtype=m.choice("dtype", "float32", DTYPES),
        device=device,
        backends=m.str_list("backends", ("queued",), BACKENDS),
        compile=m.boolean("compile", False),
    )
    if "ray" in model.backends:
        from schedulers.factory import ray_missing

        problem = ray_missing()
        if problem:
            raise m.fail("backends", problem)

    if "workload" not in doc:
        raise SpecError(f"{path}: missing section [workload] (it needs at least `contexts = [2048]`)")
    w = _Reader(path, "workload", doc["workload"], ("contexts", "new_tokens", "batch", "batches", "repeats", "seed"))
    if not w.has("contexts"):
        raise w.fail("contexts", "missing; list the prompt lengths to tune, e.g. contexts = [2048, 8192]")
    if w.has("batch") and w.has("batches"):
        raise w.fail("batch", "give either batch (one) or batches (a list, one study per context and batch), not both")
    batches = w.int_list("batches", (w.integer("batch", 1, minimum=1),))
    workload = WorkloadSpec(
        contexts=w.int_list("contexts", None),
        new_tokens=w.integer("new_tokens", 32, minimum=1),
        batch=batches[0],
        batches=batches,
        repeats=w.integer("repeats", 3, minimum=1),
        seed=w.integer("seed", 0, minimum=0),
    )

    s = _Reader(path, "space", doc.get("space", {}), (*KNOBS, "kernel"))
    space = {knob: s.int_list(knob, tuple(DEFAULT_SPACE[knob])) for knob in KNOBS}
    _check_space(s, space, shape, workload.contexts)
    k = _Reader(path, "space.kernel", s.table.get("kernel", {}), KERNEL_KNOBS)
    kernel_space = {knob: k.int_list(knob, None) for knob in KERNEL_KNOBS if k.has(knob)}
    _check_space(k, {**space, **kernel_space}, shape, workload.contexts)
    if kernel_space and "ray" in model.backends:
        raise k.fail(next(iter(kernel_space)), "kernel knobs do not reach the Ray actors' kernels; "
                                                "drop \"ray\" from [model] backends or drop [space.kernel]")

    o = _Reader(path, "objective", doc.get("objective", {}), ("w_decode", "w_prefill", "w_recall", "recall_floor"))
    objective = ObjectiveSpec(
        w_decode=o.number("w_decode", 1.0, minimum=0.0),
        w_prefill=o.number("w_prefill", 1.0, minimum=0.0),
        w_recall=o.number("w_recall", 1.0, minimum=0.0),
        recall_floor=o.number("recall_floor", 0.0, minimum=0.0, maximum=1.0),
    )
    if objective.w_decode == 0 and objective.w_prefill == 0:
        raise o.fail("w_decode", "w_decode and w_prefill are both 0; give at least one a positive weight")

    se = _Reader(path, "search", doc.get("search", {}), ("strategy", "n_trials", "timeout_s", "seed"))
    timeout_s = se.number("timeout_s", None, minimum=0.0, exclusive_min=True)
    search = SearchSpec(
        strategy=se.choice("strategy", "portfolio", STRATEGIES),
        # A wall-time budget alone means: as many trials as fit.
        n_trials=se.integer("n_trials", None if timeout_s else 40, minimum=1),
        timeout_s=timeout_s,
        seed=se.integer("seed", None, minimum=0),
    )

    t = _Reader(path, "trials", doc.get("trials", {}), ("timeout_factor", "timeout_min_s", "timeout_cap_s", "process"))
    trials = TrialLimits(
        timeout_factor=t.number("timeout_factor", 5.0, minimum=1.0),
        timeout_min_s=t.number("timeout_min_s", 60.0, minimum=0.0, exclusive_min=True),
        timeout_cap_s=t.number("timeout_cap_s", 900.0, minimum=0.0, exclusive_min=True),
        process=t.choice("process", TrialLimits.process, PROCESSES),
    )
    if trials.timeout_min_s > trials.timeout_cap_s:
        raise t.fail("timeout_min_s", f"{trials.timeout_min_s:g} is above timeout_cap_s {trials.timeout_cap_s:g}")

    c = _Reader(path, "confirmation", doc.get("confirmation", {}), ("top_k", "repeats", "alpha", "processes"))
    # Mann-Whitney on n vs n samples cannot reach p < 0.05 below n = 4.
    repeats = c.integer("repeats", 8, minimum=4)
    processes = c.integer("processes", 2, minimum=1)
    if processes > repeats:
        raise c.fail("processes", f"{processes} processes cannot share {repeats} repeats; "
                                  f"use at most {repeats} or raise repeats")
    confirmation = ConfirmationSpec(
        top_k=c.integer("top_k", 3, minimum=0),
        repeats=repeats,
        alpha=c.number("alpha", 0.05, minimum=0.0, maximum=0.5, exclusive_min=True),
        processes=processes,
    )
    return StudySpec(model, workload, space, objective, search, trials, confirmation, storage, path, kernel_space)


def _check_shape(shape: str, reader: _Reader) -> None:
    from kernels.model import SHAPES

    if shape not in SHAPES:
        raise reader.fail("shape", f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def _check_space(reader: _Reader, space: dict[str, tuple[int, ...]], shape: str, contexts: tuple[int, ...]) -> None:
    """Refuse values written in [space] that no valid config can use (the defaults are
    meant for every shape and may hold values a small shape cannot use)."""
    from autotune.space import impossible_values
    from kernels.model import SHAPES

    config = SHAPES[shape]
    for knob, (bad, rule) in impossible_values(space, config.num_heads, contexts,
                                               config.qk_dim // config.num_heads).items():
        if reader.has(knob):
            values = ", ".join(map(str, bad))
            raise reader.fail(knob, f"{values} can never run for shape {shape!r} at contexts "
                                    f"{', '.join(map(str, contexts))}: {rule}")


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec file; raises SpecError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"study spec {path} does not exist (see studies/*.toml for examples)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read study spec {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    return parse_spec(doc, str(path))
