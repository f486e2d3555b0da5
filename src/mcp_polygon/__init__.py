"""mcp-polygon: the Polygon.io / Massive.com market-data API as an MCP server."""

__version__ = "0.1.0"
