"""One JSON line on stdout, and nothing else there.

The benchmark's parent parses stdout, so everything that libraries print (torch
warnings, Ray banners, a stray print in a kernel) must go to stderr. `ResultChannel`
moves file descriptor 1 onto stderr for the whole run and keeps a private duplicate of
the original stdout for the single result line; whichever of the main thread and the
timeout watchdog emits first wins, the other is ignored.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from typing import IO


class ResultChannel:
    def __init__(self, stream: IO[str] | None = None, *, redirect_fds: bool = False):
        """stream: where the line goes (default: the real stdout).

        redirect_fds: point fd 1 (and sys.stdout) at stderr until close(); used by the
        benchmark process itself, not by in-process callers such as tests.
        """
        self._lock = threading.Lock()
        self._emitted: dict | None = None
        self._saved_fd: int | None = None
        self._saved_sys_stdout = None
        if redirect_fds:
            sys.stdout.flush()
            self._saved_fd = os.dup(1)
            os.dup2(2, 1)
            self._stream = os.fdopen(self._saved_fd, "w", encoding="utf-8", closefd=False)
            self._saved_sys_stdout = sys.stdout
            sys.stdout = sys.stderr
        else:
            self._stream = stream if stream is not None else sys.stdout

    @property
    def stream(self) -> IO[str]:
        """Where result lines go (the real stdout); a warm worker answers each request
        on a channel of its own over this stream."""
        return self._stream

    @property
    def emitted(self) -> dict | None:
        return self._emitted

    def emit(self, result: dict) -> bool:
        """Write the result line once; False if a result was already written."""
        line = json.dumps(_json_safe(result), allow_nan=False, separators=(",", ":"))
        with self._lock:
            if self._emitted is not None:
                return False
            self._stream.write(line + "\n")
            self._stream.flush()
            self._emitted = result
            return True

    def close(self) -> None:
        if self._saved_fd is not None:
            self._stream.flush()
            os.dup2(self._saved_fd, 1)
            os.close(self._saved_fd)
            self._saved_fd = None
            sys.stdout = self._saved_sys_stdout


def _json_safe(obj):
    """NaN/inf become null (JSON has neither); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy or torch scalar
        return _json_safe(obj.item())
    return str(obj)
