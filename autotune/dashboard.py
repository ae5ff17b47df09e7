"""optuna-dashboard on the store, as `autotune dashboard` serves it.

The dashboard reads the same Optuna storage the tuner writes, so it can stay open
during a run and shows trials as they finish (history, parameter plots, the user
attrs: strategy, metrics, counters, stderr tail).
"""

from __future__ import annotations

import socket
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna_dashboard import wsgi

from autotune.errors import UserError


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # Ctrl-C does not wait for open browser connections


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # the browser polls every few seconds
        pass


def dashboard_server(storage, host: str, port: int) -> WSGIServer:
    """A threading WSGI server of optuna-dashboard on `storage`, bound to host:port
    (port 0: a free one); call serve_forever() on it."""
    try:
        return make_server(host, port, wsgi(storage), server_class=_ThreadingServer, handler_class=_QuietHandler)
    except (OSError, socket.gaierror) as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
