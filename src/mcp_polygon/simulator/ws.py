"""STUB (being written): the vendor WebSocket protocol for all six markets on 127.0.0.1."""

from __future__ import annotations


class WsSimulator:
    def __init__(self, *, api_key: str, host: str = "127.0.0.1", port: int = 0, rate: float = 5.0, seed: int = 7):
        self.api_key = api_key
        self.url = f"ws://{host}:{port}"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
