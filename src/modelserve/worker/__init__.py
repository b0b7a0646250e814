"""The worker child process: loads one model version's handler and serves batches.

This package is the only place where torch and user code run; the frontend starts it as
``python -m modelserve.worker`` and talks to it through ``modelserve.pool``.
"""
