"""Study names, formatted and parsed side by side.

One study per (model shape, device kind, backends, context length, batch), named
`{shape}/{device_kind}/{backend+backend}/L{context}` (with `/B{batch}` above batch 1).
A study started beside an existing one with `--new-study` gets the next free suffix
`~2`, `~3`, ...; a plain run resumes the newest study of that family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUFFIX_SEP = "~"

# `--new-study` starts `{name}~2`, `~3`, ... beside an old study; the newest is current.
_NAME = re.compile(
    r"^(?P<shape>[^/]+)/(?P<device_kind>[^/]+)/(?P<backends>[^/]+)/L(?P<context>\d+)(?:/B(?P<batch>\d+))?"
    rf"(?:{re.escape(SUFFIX_SEP)}(?P<generation>\d+))?$"
)


@dataclass(frozen=True)
class StudyKey:
    """What a study name says: one study per (shape, device kind, backends, context, batch)."""

    shape: str
    device_kind: str
    backends: tuple[str, ...]
    context: int
    generation: int = 1  # 1 for `name`, N for `name~N`
    batch: int = 1  # `/B<batch>` in the name; none for batch 1

    @property
    def family(self) -> tuple:
        return (self.shape, self.device_kind, self.backends, self.context, self.batch)


def parse_study_name(name: str) -> StudyKey | None:
    """The parts of a study name written by `autotune tune`; None for other studies."""
    match = _NAME.match(name)
    if not match:
        return None
    return StudyKey(
        shape=match["shape"],
        device_kind=match["device_kind"],
        backends=tuple(match["backends"].split("+")),
        context=int(match["context"]),
        generation=int(match["generation"] or 1),
        batch=int(match["batch"] or 1),
    )


def study_name(shape: str, device_kind: str, backends: tuple[str, ...] | list[str], context: int,
               batch: int = 1) -> str:
    """`shape/device/backends/L<context>`, with `/B<batch>` for batches above 1 (so the
    studies of batch 1 keep the names they had before batch was a dimension)."""
    return f"{shape}/{device_kind}/{'+'.join(backends)}/{study_tail(context, batch)}"


def study_tail(context: int, batch: int = 1) -> str:
    """The part of a study's name after its backends: 'L2048', or 'L2048/B16' for batch 16."""
    return f"L{context}" if batch == 1 else f"L{context}/B{batch}"


def family(names: list[str], base: str) -> list[str]:
    """Studies named `base` or `base~N`, oldest first."""
    found: list[tuple[int, str]] = []
    for name in names:
        if name == base:
            found.append((1, name))
        elif name.startswith(base + SUFFIX_SEP) and name[len(base) + 1 :].isdigit():
            found.append((int(name[len(base) + 1 :]), name))
    return [name for _, name in sorted(found)]


def next_name(names: list[str], base: str) -> str:
    existing = family(names, base)
    if not existing:
        return base
    last = existing[-1]
    n = 1 if last == base else int(last.rsplit(SUFFIX_SEP, 1)[1])
    return f"{base}{SUFFIX_SEP}{n + 1}"
