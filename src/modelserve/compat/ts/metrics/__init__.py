"""``ts.metrics``: the types handlers pass to ``context.metrics``."""
