"""Logging, metrics, HTTP endpoints and health probes."""
