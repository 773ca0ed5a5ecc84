"""The process runner: one child process in its own process group, JSON progress lines read by a thread."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading


class ProcessRunner:
    """One child process in its own process group, its stdout JSON lines collected by a reader thread.

    A process group (a new session on POSIX) lets ``cancel()`` end the child and everything it started
    (e.g. worker processes) at once; the reader threads keep pipes drained so the child never blocks.
    """

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | None = None):
        self.args, self.env, self.cwd = list(args), env, cwd
        self.process: subprocess.Popen | None = None
        self._messages: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, text=True, bufsize=1, env=self.env,
                                        cwd=self.cwd, **kwargs)
        for stream, sink in ((self.process.stdout, self._read_stdout), (self.process.stderr, self._read_stderr)):
            thread = threading.Thread(target=sink, args=(stream,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read_stdout(self, stream) -> None:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = {"text": line}
            self._messages.put(message if isinstance(message, dict) else {"text": line})

    def _read_stderr(self, stream) -> None:
        for line in stream:
            if line.strip():
                self._stderr.append(line.rstrip())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def messages(self) -> list[dict]:
        """Messages that arrived since the last call."""
        out = []
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                return out

    def returncode(self) -> int | None:
        """None while running; once finished, waits for the reader threads so no line is lost."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None:
            for thread in self._threads:
                thread.join(timeout=5)
        return code

    def stderr_lines(self) -> list[str]:
        return list(self._stderr)

    def cancel(self, grace_s: float = 3.0) -> None:
        """End the whole process tree: polite signal first, then kill."""
        if self.process is None or self.process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False)
        else:
            pgid = self.process.pid  # the child leads its own session, so its pid is the group id
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                return
            try:
                os.killpg(pgid, signal.SIGKILL)  # also reaps grandchildren that ignored SIGTERM
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)
