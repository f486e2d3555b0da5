"""STUB (being written): registers the 48 stream tools."""


def register_stream_tools(server, manager, settings) -> None:
    pass
