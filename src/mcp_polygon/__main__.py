from mcp_polygon.cli import main

main()
