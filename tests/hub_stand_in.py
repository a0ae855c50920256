"""A stand-in Hugging Face Hub on 127.0.0.1: the file endpoints ``huggingface_hub`` downloads through.

It answers ``HEAD`` and ``GET /{owner}/{repo}/resolve/{revision}/{filename}`` for the files it holds,
with the headers the client reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``), and 404 with
``X-Error-Code: EntryNotFound`` for any other file. Every request path is recorded.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c0ffee" + "0" * 34


class _Handler(BaseHTTPRequestHandler):
    server: "StandInHub"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        found = None
        if len(parts) >= 5 and parts[2] == "resolve":
            found = self.server.files.get(("/".join(parts[:2]), "/".join(parts[4:])))
        if found is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(found).hexdigest()}"')
        self.send_header("Content-Length", str(len(found)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(found)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)


class StandInHub(ThreadingHTTPServer):
    """The server; ``files`` maps ``(repo_id, filename)`` to the bytes served."""

    daemon_threads = True

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def stand_in_hub(files: dict[tuple[str, str], bytes]) -> Iterator[StandInHub]:
    """Serve ``files`` on a free port of 127.0.0.1 for the duration."""
    hub = StandInHub(files)
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
        thread.join()
