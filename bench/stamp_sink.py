"""The stamp file the benchmark jobs append to, read by the drivers (standard library only,
so the peers' own interpreters can import it too).

Each line is ``TAG SEQ TIMESTAMP``: ``S`` a job started, ``E`` it ended (its ``finally:``
ran), ``P`` a named probe on the way (``--profile``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path


class Sink:
    """Reads the stamps the jobs append to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")
        self._offset = 0
        self._rest = b""
        self.starts: dict[int, float] = {}
        self.ends: dict[int, float] = {}
        self.probes: list[tuple[str, float]] = []

    def poll(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            tag, seq, ts = line.split()
            if tag == b"P":
                self.probes.append((seq.decode(), float(ts)))
            else:
                (self.starts if tag == b"S" else self.ends)[int(seq)] = float(ts)

    async def wait_for(self, tag: str, seq: int, within: float, interval: float) -> bool:
        """Poll until job ``seq`` has stamped ``tag`` (``S`` or ``E``); False on time-out."""
        stamps = self.starts if tag == "S" else self.ends
        deadline = time.monotonic() + within
        while True:
            self.poll()
            if seq in stamps:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(interval)
