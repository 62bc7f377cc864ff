"""Notify service: streams booking change events to subscribers (the contract: protos/notify/v1/notify.proto)."""
