"""Adapters: each agency's local HTTP API to bridge (outbound sealing, inbound delivery)."""
