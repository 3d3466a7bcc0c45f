#!/bin/sh
# Docker HEALTHCHECK: exit 0 when the app answers GET /heartbeat with HTTP 200, else 1.
# Under HaRP (HP_SHARED_KEY set) the app listens on a unix socket, and frpc must be running too;
# otherwise it listens on APP_HOST:APP_PORT (0.0.0.0 is asked for on 127.0.0.1).
exec python3 - <<'PY'
import http.client
import os
import socket
import sys
from pathlib import Path


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=3)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(3)
        self.sock.connect(self.unix_path)


def frpc_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "frpc":
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def main() -> int:
    if os.environ.get("HP_SHARED_KEY"):
        if not frpc_running():
            return 1
        conn: http.client.HTTPConnection = UnixConnection(os.environ.get("HP_EXAPP_SOCK", "/tmp/exapp.sock"))
    else:
        host = os.environ.get("APP_HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        port = os.environ.get("APP_PORT", "")
        if not port.isdigit():
            return 1
        conn = http.client.HTTPConnection(host, int(port), timeout=3)
    try:
        conn.request("GET", "/heartbeat")
        return 0 if conn.getresponse().status == 200 else 1
    except OSError:
        return 1
    finally:
        conn.close()


sys.exit(main())
PY
