"""``ts.torch_handler``: TorchServe's default handler classes, served by modelserve."""
