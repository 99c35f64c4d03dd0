"""Serving a dashboard folder on the loopback interface, and what such a folder may hold.

The server answers only for the files a dashboard build writes (``DASHBOARD_FILES``: the page,
its data scripts, thumbnails, the Neuronpedia and SAEDashboard exports), never lists a folder,
never follows a symbolic link, and answers only requests whose ``Host`` names the loopback
interface: a page on another site that rebinds its own name to 127.0.0.1 (DNS rebinding) sends
its own name and is refused.
"""

from __future__ import annotations

import errno
import http.server
import logging
import mimetypes
import os
import re
import shutil
import threading
import time
import urllib.parse
from http import HTTPStatus
from pathlib import Path

logger = logging.getLogger(__name__)

_THUMBNAIL = r"thumbs/\d+/[0-9a-f]{20}\.jpg"
DASHBOARD_FILES = re.compile(
    r"index\.html|data/index\.js|data/latents/c\d+\.js"
    rf"|{_THUMBNAIL}|neuronpedia/{_THUMBNAIL}|saedashboard/{_THUMBNAIL}"
    r"|neuronpedia/batch-\d+\.json|neuronpedia/explanations\.json"
    r"|saedashboard/saedashboard\.(?:json|html)"
)
"""The paths (relative, ``/``-separated) of every file a dashboard build writes."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
REQUEST_TIMEOUT_S = 10.0
"""A client that sends nothing for this long is dropped (it would hold a thread)."""


def check_dashboard_folder(out: str | Path) -> None:
    """ValueError unless ``out`` is absent, empty or a dashboard folder (it holds a build's
    ``data/index.js``): a build writes there, and ``--serve`` publishes it."""
    folder = Path(out)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    if (folder / "data" / "index.js").is_file():
        return
    foreign = sorted(p.name for p in folder.iterdir())
    if foreign:
        raise ValueError(
            f"{folder} is not empty ({', '.join(foreign[:5])}) and holds no dashboard; "
            "choose an empty directory"
        )


def dashboard_file(root: Path, url_path: str) -> Path | None:
    """The file of ``root`` that ``url_path`` names, if it is one a build writes and no part of
    its path is a symbolic link; else None."""
    relative = urllib.parse.unquote(url_path).lstrip("/") or "index.html"
    if not DASHBOARD_FILES.fullmatch(relative):
        return None
    path = root
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            return None
    return path if path.is_file() else None


class DashboardRequestHandler(http.server.BaseHTTPRequestHandler):
    """GET / HEAD of a dashboard file (``dashboard_file``) for a loopback ``Host``."""

    root: Path
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        self._reply(with_body=True)

    def do_HEAD(self) -> None:
        self._reply(with_body=False)

    def _reply(self, with_body: bool) -> None:
        host = self.headers.get("Host", "").lower()
        assert isinstance(self.server, http.server.HTTPServer)
        port = self.server.server_port
        if host not in {f"{name}:{port}" for name in LOCAL_HOSTS} | set(LOCAL_HOSTS):
            self.send_error(HTTPStatus.FORBIDDEN, "this server answers only for localhost")
            return
        url_path = urllib.parse.urlsplit(self.path).path
        if "\0" in urllib.parse.unquote(url_path):
            self.send_error(HTTPStatus.BAD_REQUEST, "invalid path")
            return
        path = dashboard_file(self.root, url_path)
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            file = open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")  # noqa: SIM115
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with file:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "text/plain")
            self.send_header("Content-Length", str(os.fstat(file.fileno()).st_size))
            self.end_headers()
            if with_body:
                shutil.copyfileobj(file, self.wfile)


def bind_server(
    directory: str | Path, *, host: str = "127.0.0.1", port: int = 8000
) -> http.server.ThreadingHTTPServer:
    """A server for the dashboard in ``directory`` bound to ``host:port`` (port 0: any free
    port), not serving yet (``serve_dashboard`` or ``start_server``). A port in use raises
    OSError saying so."""
    handler = type("Handler", (DashboardRequestHandler,), {"root": Path(directory)})
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise OSError(
            error.errno, f"port {port} on {host} is in use; pass another --port (0: any free one)"
        ) from None


def start_server(
    directory: str | Path, *, host: str = "127.0.0.1", port: int = 8000
) -> http.server.ThreadingHTTPServer:
    """Serve the dashboard in ``directory`` on ``host:port`` (port 0: any free port) in a
    daemon thread; call ``shutdown()`` and ``server_close()`` on the result to stop."""
    server = bind_server(directory, host=host, port=port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve_dashboard(
    server: http.server.ThreadingHTTPServer, *, seconds: float | None = None
) -> None:
    """Serve with ``server`` (from ``bind_server``) until Ctrl-C or for ``seconds``."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    logger.info("serving on http://%s:%s/ (Ctrl-C stops)", host, port)
    try:
        if seconds is None:
            while True:
                time.sleep(3600)
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
