"""modelserve's stand-in for TorchServe's ``ts`` package (handler-facing modules only).

Put on ``sys.path`` by the modelserve worker when the real ``ts`` is not installed, so TorchServe
handlers that import ``ts.torch_handler.base_handler``, ``ts.utils.util``, ``ts.context`` ... load
unchanged. See docs/migration.md in the modelserve repository.
"""
from .version import __version__

MODELSERVE_COMPAT = True

__all__ = ["__version__", "MODELSERVE_COMPAT"]
