"""Errors a scheduler raises to its caller."""

from __future__ import annotations


class SchedulerError(RuntimeError):
    """A failed or stuck (band, chunk) task, or a scheduler that cannot run.

    band, chunk and layer are set when the failure belongs to one task; the original
    exception (when there is one) is chained as __cause__.
    """

    def __init__(self, message: str, *, layer: int | None = None, band: int | None = None,
                 chunk: int | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.band = band
        self.chunk = chunk


def task_error(what: str, *, layer: int, band: int, chunk: int, backend: str) -> SchedulerError:
    """A SchedulerError naming the task: '<backend>: layer L band B chunk C <what>'."""
    return SchedulerError(
        f"{backend}: layer {layer} band {band} chunk {chunk} {what}", layer=layer, band=band, chunk=chunk
    )
