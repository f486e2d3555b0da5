"""STUB (being written): one supervised connection per market."""

from mcp_polygon.config import Settings


class StreamManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def aclose(self) -> None:
        pass
