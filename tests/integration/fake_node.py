"""A stand-in node process for launcher tests: serves GET /status on its config's port.

Run as ``python fake_node.py node.main --config FILE`` so its command line looks like a
node's to ``ClusterProcesses``. FAKE_NODE_MODE selects a misbehaviour:
``crash`` exits at once with a message; ``ignore-term`` ignores SIGTERM (only SIGKILL works).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    config_path = sys.argv[sys.argv.index("--config") + 1]
    with open(config_path, "rb") as fh:
        node = tomllib.load(fh)["node"]
    mode = os.environ.get("FAKE_NODE_MODE", "")
    if mode == "crash":
        print(f"fake node {node['id']}: refusing to start (FAKE_NODE_MODE=crash)", flush=True)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = {"node": node["id"], "view": 0, "primary": 0, "height": 0, "head_hash": ""}
            body = json.dumps(status).encode()
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    print(f"fake node {node['id']} serving on port {node['port']}", flush=True)
    HTTPServer((node["host"], node["port"]), Handler).serve_forever()


if __name__ == "__main__":
    main()
