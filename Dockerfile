# mcp-polygon over streamable HTTP, for a server shared by several agents or run on another machine.
#
#   docker build -t mcp-polygon .
#   docker run --rm -p 127.0.0.1:8000:8000 -e POLYGON_API_KEY -e POLYGON_HTTP_TOKEN -v mcp-data:/data mcp-polygon
#
# Clients connect to http://127.0.0.1:8000/mcp and send 'Authorization: Bearer <POLYGON_HTTP_TOKEN>'. The server
# binds 0.0.0.0 inside the container, so it refuses to start without POLYGON_HTTP_TOKEN; nothing secret is baked
# into the image. Reached under another host name, list it in POLYGON_ALLOWED_HOSTS (DNS-rebinding protection).
# Without a key: append `--simulate --transport http --host 0.0.0.0 --port 8000` to `docker run ... mcp-polygon`.
# As a stdio server for a client that starts containers:
#   docker run -i --rm -e POLYGON_API_KEY mcp-polygon --transport stdio

FROM python:3.11-slim AS build
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POLYGON_DATA_DIR=/data
# The wheel, not the source tree: the image runs what `pip install mcp-polygon` would.
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 mcp \
    && useradd --system --uid 10001 --gid mcp --create-home --home-dir /home/mcp mcp \
    && mkdir /data \
    && chown mcp:mcp /data
USER 10001:10001
VOLUME /data
EXPOSE 8000
# A TCP connect, not an HTTP request: every request without the token is refused and logged.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8000), 3).close()"]
ENTRYPOINT ["mcp-polygon"]
CMD ["--transport", "http", "--host", "0.0.0.0", "--port", "8000"]

LABEL org.opencontainers.image.title="mcp-polygon" \
      org.opencontainers.image.description="Polygon.io / Massive market data over MCP (REST and WebSocket streams)" \
      org.opencontainers.image.licenses="MIT" \
      io.modelcontextprotocol.server.name="io.github.mcp-polygon/mcp-polygon"
