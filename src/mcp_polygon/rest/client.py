"""STUB (being written): async HTTP client for the vendor REST API."""

from mcp_polygon.config import Settings


class RestClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def aclose(self) -> None:
        pass
