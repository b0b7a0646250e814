"""Thin aiohttp adapters: one app per port, each mapping errors to JSON in one place."""
