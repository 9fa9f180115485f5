"""Live counts of what a job's purges have removed so far.

The walk (``service.fs``) removes files in several worker threads and calls
``add`` once per chunk of names it has handled; the job runner reads
``snapshot`` about once a second and writes it into the job's row, so a
client polling the job sees files and bytes move during a long purge.
"""

from __future__ import annotations

import threading


class Progress:
    def __init__(self, files: int = 0, bytes_: int = 0) -> None:
        self._lock = threading.Lock()
        self.files = files
        self.bytes = bytes_

    def add(self, files: int, bytes_: int) -> None:
        """Thread-safe: called from the walk's worker threads."""
        with self._lock:
            self.files += files
            self.bytes += bytes_

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.files, self.bytes
