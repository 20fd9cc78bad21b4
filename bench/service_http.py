"""The HTTP and SSE clients of ``bench_service.py``: asyncio sockets, standard library only.

``Http`` is one keep-alive HTTP/1.1 connection for plain requests; ``SseClient`` reads an
event stream (chunked or not) and stamps ``time.monotonic()`` when each progress message
(``"<index>:<seq>"``, what ``service_worker.py`` reports) first arrives in a frame: the time
the read that completed the frame returned, before any parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

__all__ = ["HOST", "STREAM", "Http", "SseClient", "connected", "read_chunk"]

HOST = "127.0.0.1"
STREAM = "/api/stream?topic={topic}"
"""The multiplexed route: ``changes`` is the dashboard's topic, ``processes`` optio's list."""
MSG_RE = re.compile(rb'"message":"(\d+:\d+)"')
MAX_FRAMES = 10_000_000
"""A bound on the frames one client reads, whatever the run."""


class Http:
    """One keep-alive HTTP/1.1 connection (standard library only)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``: the status and the body."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                HOST, self.port, limit=1 << 20
            )
        assert self._reader is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = _headers(head)
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            for _ in range(1_000_000):
                chunk = await read_chunk(self._reader)
                if chunk is None:
                    break
                parts.append(chunk)
            body = b"".join(parts)
        else:
            body = await self._reader.read()
        if headers.get("connection") == "close":
            await self.close()
        return status, body

    async def get_once(self, path: str) -> tuple[int, bytes]:
        try:
            return await self.get(path)
        finally:
            await self.close()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip().lower()
    return out


async def read_chunk(reader: asyncio.StreamReader) -> bytes | None:
    """One chunk of a chunked body, None at its end."""
    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
    if size == 0:
        await reader.readline()
        return None
    return (await reader.readexactly(size + 2))[:-2]


class SseClient:
    """One ``EventSource``-like client: reads frames, stamps when each message arrived."""

    def __init__(self, port: int, *, track: bool, topic: str = "changes") -> None:
        self.port = port
        self.track = track
        self.topic = topic
        self.arrivals: dict[str, float] = {}
        self.frames = 0
        self.bytes = 0
        self.snapshot = asyncio.Event()
        self.error: str | None = None

    async def run(self, max_seconds: float) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.port, limit=1 << 22)
        try:
            writer.write(
                f"GET {STREAM.format(topic=self.topic)} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                self.error = head.split(b"\r\n", 1)[0].decode()
                return
            chunked = _headers(head).get("transfer-encoding") == "chunked"
            deadline = time.monotonic() + max_seconds
            buf = b""
            while self.frames < MAX_FRAMES and time.monotonic() < deadline:
                data = await read_chunk(reader) if chunked else await reader.read(1 << 16)
                if not data:
                    return
                now = time.monotonic()
                self.bytes += len(data)
                buf += data
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    self._on_event(event, now)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _on_event(self, event: bytes, now: float) -> None:
        if b"data:" not in event:
            return  # retry: or a keepalive comment
        self.frames += 1
        if not self.snapshot.is_set() and (
            b'"type":"update"' in event or b'"type":"reset"' in event
        ):
            self.snapshot.set()
        if self.track:
            for found in MSG_RE.finditer(event):
                self.arrivals.setdefault(found.group(1).decode(), now)


@contextlib.asynccontextmanager
async def connected(
    port: int, count: int, *, track: bool, max_seconds: float, topic: str = "changes"
) -> AsyncIterator[list[SseClient]]:
    """``count`` SSE clients of ``topic``, each past its snapshot; cancelled on exit."""
    clients = [SseClient(port, track=track, topic=topic) for _ in range(count)]
    tasks = [asyncio.create_task(c.run(max_seconds)) for c in clients]
    try:
        waits = [asyncio.create_task(c.snapshot.wait()) for c in clients]
        _, pending = await asyncio.wait(waits, timeout=60)
        for task in pending:
            task.cancel()
        if pending:
            errors = [c.error for c in clients if c.error]
            raise RuntimeError(f"{len(pending)} clients got no snapshot within 60 s: {errors[:3]}")
        yield clients
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
