"""STUB (being written): registers the 81 REST tools."""


def register_rest_tools(server, rest, settings) -> None:
    pass
