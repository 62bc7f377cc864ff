"""Notify service: streams booking change events to subscribers (contract in protos/notify/v1; built in issue 3)."""
