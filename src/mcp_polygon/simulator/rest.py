"""STUB (being written): the vendor REST API on 127.0.0.1.

Contract (used by Simulator, tests, demo):
    sim = RestSimulator(api_key=..., host="127.0.0.1", port=0, seed=7)
    await sim.start(); sim.url -> "http://127.0.0.1:<port>"; await sim.stop()
    sim.inject(path_prefix=None, *, status=None, retry_after=None, delay=0.0, invalid_json=False, times=1)
    sim.clear_faults()
    sim.requests -> list[RecordedRequest(path, params, auth)] of requests seen (auth = "query"|"bearer"|None)
"""

from __future__ import annotations


class RestSimulator:
    def __init__(self, *, api_key: str, host: str = "127.0.0.1", port: int = 0, seed: int = 7) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
