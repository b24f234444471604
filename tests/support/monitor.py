"""What a Redis server runs, read with MONITOR (a real server, no stand-in): the order and
count of commands a test asserts on."""

from __future__ import annotations

import threading

import redis


class Monitor:
    """Every command the graph Redis runs while it is open (MONITOR: a script's own
    commands are marked "lua")."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self._client = redis.Redis.from_url(url)
        self._url = url
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        with self._client.monitor() as m:
            self._ready.set()
            for event in m.listen():
                self.lines.append(f"{event['client_type']} {event['command']}")
                if self._stop and "cgtest-monitor-stop" in event["command"]:
                    return

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        redis.Redis.from_url(self._url).get("cgtest-monitor-stop")  # the reader's last line
        self._thread.join(10)


def command(line: str) -> str:
    """The command name of a MONITOR line ("" when redis-py parsed none: 4.5's parser
    leaves some lines of the shared broker Redis empty, none that name a run)."""
    parts = line.split(None, 2)
    return parts[1].strip('"').lower() if len(parts) > 1 else ""
