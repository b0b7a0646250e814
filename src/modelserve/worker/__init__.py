"""The worker child process: loads one model version's handler and serves batches.

This package is the only place where torch and user code run. Workers are forked from the worker
template (``python -m modelserve.worker.template``, which imported torch once), or started as
``python -m modelserve.worker``; ``modelserve.spawn`` decides which, and the frontend talks to them
through ``modelserve.pool``.
"""
