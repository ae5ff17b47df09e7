"""`autotune dashboard`: serve optuna-dashboard on the store until Ctrl-C.

The dashboard reads the same Optuna storage the tuner writes, so it can stay open
during a run and shows trials as they finish (history, parameter plots, the user
attrs: strategy, metrics, counters, stderr tail).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from autotune.store.views import add_store_arguments, open_storage, redact_url, storage_from_args


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # Ctrl-C does not wait for open browser connections


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # the browser polls every few seconds
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")


def run(args: argparse.Namespace) -> int:
    from optuna_dashboard import wsgi

    from autotune.errors import UserError

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port number; use 1-65535 (0 picks a free one)")
    url, _ = storage_from_args(args)
    app = wsgi(open_storage(url))
    try:
        server = make_server(args.host, args.port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except (OSError, socket.gaierror) as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); pick another --port") from None
    host, port = server.server_address[:2]
    # `kill` (a service manager's stop) ends the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"optuna-dashboard for {redact_url(url)} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
