"""A protocol-faithful fake of the vendor's REST and WebSocket APIs, served on 127.0.0.1.

Tests, benchmarks, the offline demo and `mcp-polygon --simulate` all run against it. Faults are injected
by calling methods on `sim.rest` (RestSimulator) and `sim.ws` (WsSimulator).
"""

from __future__ import annotations

from mcp_polygon.simulator.rest import RestSimulator
from mcp_polygon.simulator.ws import WsSimulator

DEFAULT_API_KEY = "sim-key"  # the simulator's own key; it is not a vendor secret
DEFAULT_RATE = 5.0  # events per second per subscribed topic


class Simulator:
    """REST + WebSocket simulator. `async with Simulator() as sim:` then use sim.rest_url / sim.ws_url."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        rest_port: int = 0,
        ws_port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        rate: float = DEFAULT_RATE,
        seed: int = 7,
    ) -> None:
        self.api_key = api_key
        self.rest = RestSimulator(api_key=api_key, host=host, port=rest_port, seed=seed)
        self.ws = WsSimulator(api_key=api_key, host=host, port=ws_port, rate=rate, seed=seed)

    @property
    def rest_url(self) -> str:
        return self.rest.url

    @property
    def ws_url(self) -> str:
        return self.ws.url

    async def start(self) -> None:
        await self.rest.start()
        try:
            await self.ws.start()
        except BaseException:
            await self.rest.stop()
            raise

    async def stop(self) -> None:
        try:
            await self.ws.stop()
        finally:
            await self.rest.stop()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
