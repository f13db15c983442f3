"""State behind the gateway: key stores and their change feeds. One protocol, several backends."""

from aiperimeter.state.base import KeyStore, open_key_store

__all__ = ["KeyStore", "open_key_store"]
