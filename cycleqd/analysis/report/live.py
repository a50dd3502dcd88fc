"""``cycleqd report RUN_DIR --serve``: the report of a running run on localhost, rendered anew
whenever the run writes (a generation, a checkpoint, its summary); the page asks for the run's
stamp every few seconds and reloads when it changed. The standard library's HTTP server: a
page for one person, never exposed beyond this machine."""

from __future__ import annotations

import hashlib
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cycleqd.analysis.report.page import render

log = logging.getLogger(__name__)

# What a run writes as it goes: a change to any of them is news for the page.
WATCHED = ("metrics.jsonl", "candidates.jsonl", "summary.json", "front.json", "checkpoint/state.ckpt")


def stamp(run_dir: Path) -> str:
    """A digest of the sizes and modification times of the files a run writes as it goes."""
    h = hashlib.sha256()
    for name in WATCHED:
        path = Path(run_dir) / name
        st = path.stat() if path.is_file() else None
        h.update((f"{name}:{st.st_size}:{st.st_mtime_ns};" if st else f"{name}:-;").encode())
    return h.hexdigest()[:16]


class _Page:
    """The last rendered page and the stamp it was rendered at (one render at a time)."""

    def __init__(self, run_dir: Path, every_ms: int) -> None:
        self.run_dir, self.every_ms = run_dir, every_ms
        self.lock = threading.Lock()
        self.at, self.html = "", b""

    def get(self) -> bytes:
        with self.lock:
            now = stamp(self.run_dir)
            if now != self.at:
                # stamped before rendering: a write during the render shows on the next poll
                self.html = render(self.run_dir, live_stamp=now, live_every_ms=self.every_ms).encode()
                self.at = now
            return self.html


def make_server(run_dir: str | Path, port: int = 0, every_ms: int = 2000) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (``port`` 0: any free one) serving ``/`` (the live report) and
    ``/stamp``; call ``serve_forever`` on it. Nothing in ``run_dir`` is written.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.
    """
    from cycleqd.analysis.report.view import read_view

    run_dir = Path(run_dir)
    read_view(run_dir)  # a wrong directory fails here, not in the browser
    page = _Page(run_dir, every_ms)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                body, kind = page.get(), "text/html; charset=utf-8"
            elif path == "/stamp":
                body, kind = stamp(run_dir).encode(), "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page reloaded before it had read the answer

        def log_message(self, fmt: str, *args) -> None:
            log.debug(fmt, *args)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(run_dir: str | Path, port: int = 8765, every_ms: int = 2000) -> None:
    """Serve the live report of ``run_dir`` on http://127.0.0.1:``port``/ until interrupted."""
    server = make_server(run_dir, port, every_ms)
    print(f"the report of {run_dir}, live: http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
