"""modelserve: a pure-Python model server for PyTorch."""
from .handler import BaseHandler, Context, PredictionException

__version__ = "0.1.0"

__all__ = ["BaseHandler", "Context", "PredictionException", "__version__"]
