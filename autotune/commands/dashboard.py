"""`autotune dashboard`: serve optuna-dashboard on the store until Ctrl-C (autotune.dashboard)."""

from __future__ import annotations

import argparse
import signal
import sys

from autotune.commands.store_arguments import add_store_arguments, storage_url
from autotune.dashboard import dashboard_server
from autotune.errors import UserError
from autotune.store.views import open_storage, redact_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port number; use 1-65535 (0 picks a free one)")
    url = storage_url(args)
    server = dashboard_server(open_storage(url), args.host, args.port)
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
