"""``lightseg web``: the web app (LightSegWeb, beside LightSegLib in a source checkout) on 127.0.0.1 and a free port."""
from __future__ import annotations

import importlib
import os
import socket
import sys
import tempfile
from pathlib import Path

from ..errors import LightSegError

WEB_INSTALL = "pip install -e '.[web]' in a LightSeg source checkout"


def register(sub) -> None:
    parser = sub.add_parser("web", help="serve the web app: open a volume, segment, see and download the result")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--data", type=Path, help="a server folder whose volumes the page offers (read only)")
    parser.add_argument("--work", type=Path, help="folder for uploads and downloads (default: a new temporary one)")
    parser.add_argument("--max-upload-mb", type=float, default=2048, help="largest upload accepted (default 2048)")
    parser.add_argument("--threads", type=int, default=None, help="threads for each segmentation")
    parser.add_argument("--open", action="store_true", help="open the page in this computer's browser")
    parser.set_defaults(func=run)


def load_web():
    """The web package: it and the Slicer module's logic sit beside LightSegLib in a source checkout."""
    root = Path(__file__).resolve().parents[2]
    for folder in (root / "LightSeg", root):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        files = importlib.import_module("LightSegWeb.files")
        app = importlib.import_module("LightSegWeb.app")
    except ModuleNotFoundError as err:
        raise LightSegError(f"'lightseg web' needs {(err.name or 'trame-slicer').split('.')[0]}: {WEB_INSTALL}") from err
    return files, app


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(args) -> int:
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):  # render offscreen (Mesa EGL), no X needed
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    files, app = load_web()
    work = args.work or Path(tempfile.mkdtemp(prefix="lightseg-web-"))
    workspace = files.Workspace(work, args.data, int(args.max_upload_mb * 1e6))
    port = args.port or free_port(args.host)
    print(f"LightSeg web: http://{args.host}:{port}/  (work folder {workspace.work_dir})", flush=True)
    app.serve(workspace, host=args.host, port=port, threads=args.threads, open_browser=args.open)
    return 0
