"""Real servers the integration tests start: nginx with the RTMP module (Debian's libnginx-mod-rtmp).

``.ci/run`` installs them; a test that finds one missing fails with the install command rather than skipping.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class NginxRtmp:
    """nginx serving ``rtmp://127.0.0.1:PORT/live/KEY`` from a private folder; start, stop, restart."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists() or not NGINX_RTMP_MODULE.exists():
            raise RuntimeError(
                "nginx with the RTMP module is missing: apt-get install -y nginx libnginx-mod-rtmp (see .ci/run)"
            )
        self.nginx = nginx
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.config = folder / "nginx.conf"
        self.config.write_text(
            f"load_module {NGINX_RTMP_MODULE};\n"
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {folder}/nginx.pid;\n"
            f"error_log {folder}/logs/error.log info;\n"
            "events { worker_connections 64; }\n"
            "rtmp { server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    chunk_size 4096;\n"
            "    application live { live on; record off; }\n"
            "} }\n"
        )

    def url(self, key: str = "anchor") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self) -> NginxRtmp:
        self.process = subprocess.Popen(
            [self.nginx, "-c", str(self.config), "-p", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> NginxRtmp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
