"""The TorchServe release whose handler API this compatibility package follows."""
__version__ = "0.12.0"
