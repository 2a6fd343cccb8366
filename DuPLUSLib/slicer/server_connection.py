""""Test connection" for both modules' "Where to run": one line about a DuPLUS server, or what is wrong."""

from __future__ import annotations

from ..errors import DuPLUSError
from ..remote import ServerClient, describe_server

__all__ = ["ServerConnection"]


class ServerConnection:
    """Mixed into the Segment and Prognosis logics: the same check of the same server settings."""

    @staticmethod
    def testConnection(server: str, apiKey: str | None = None) -> str:
        """One line about the server (version, model, device, queue); raises what is wrong:
        ``ServerError`` for an address that does not answer as a DuPLUS server, ``AuthenticationError``
        for the key, ``ProtocolMismatchError`` naming both versions."""
        return describe_server(ServerClient(server, api_key=apiKey, timeout_s=10.0).check())

    @classmethod
    def describeServer(cls, server: str, apiKey: str | None = None) -> str:
        """What "Test connection" shows: :meth:`testConnection`'s line, or what is wrong."""
        try:
            return cls.testConnection(server, apiKey)
        except DuPLUSError as error:
            return f"Failed: {error}"
