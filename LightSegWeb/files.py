"""Where the web app may read and write: the data folder given at start (read only, picked from a list the server made)
and its own work folder (uploads, downloads). No path a browser sends reaches the file system unchecked."""
from __future__ import annotations

import re
from pathlib import Path

from LightSegLib.errors import LightSegError
from LightSegLib.io import is_volume_file

#: how many files of the data folder the page lists (a shared server's folder can be large)
MAX_LISTED = 500


class Workspace:
    """The data folder (may be None) and the work folder; uploads are limited to ``max_upload_bytes``."""

    def __init__(self, work_dir: Path, data_dir: Path | None = None, max_upload_bytes: int = 2 * 1024**3):
        self.work_dir = Path(work_dir).resolve()
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.max_upload_bytes = max_upload_bytes
        (self.work_dir / "uploads").mkdir(parents=True, exist_ok=True)
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise LightSegError(f"data folder not found: {data_dir}")

    def data_files(self) -> list[str]:
        """Volume files of the data folder, relative to it (links leading outside it are left out)."""
        if self.data_dir is None:
            return []
        found = []
        for path in sorted(self.data_dir.rglob("*")):
            if path.is_file() and is_volume_file(path) and self._inside(path, self.data_dir):
                found.append(path.relative_to(self.data_dir).as_posix())
                if len(found) >= MAX_LISTED:
                    break
        return found

    def data_file(self, relative: str) -> Path:
        """A file of the data folder named as the list named it; anything else is refused."""
        if self.data_dir is None or relative not in self.data_files():
            raise LightSegError(f"not a file of the data folder: {relative}")
        return self.data_dir / relative

    def save_upload(self, name: str, content: bytes) -> Path:
        """An uploaded file under uploads/, by its base name made safe; over the size limit it is refused."""
        if len(content) > self.max_upload_bytes:
            raise LightSegError(f"{safe_name(name)} is {len(content) / 1e6:.0f} MB: uploads are limited to "
                                f"{self.max_upload_bytes / 1e6:.0f} MB")
        target = self.work_dir / "uploads" / safe_name(name)
        target.write_bytes(content)
        return target

    def output(self, name: str) -> Path:
        folder = self.work_dir / "downloads"
        folder.mkdir(exist_ok=True)
        return folder / safe_name(name)

    @staticmethod
    def _inside(path: Path, folder: Path) -> bool:
        return path.resolve().is_relative_to(folder)


def safe_name(name: str) -> str:
    """The base name of what a browser called a file, with only letters, digits and ``._-`` kept."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(name).replace("\\", "/")).name).lstrip(".")
    return base[:200] or "upload"
