"""Built-in handlers, addressable by short name in ``--handler`` and in manifests."""
