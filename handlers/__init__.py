"""Built-in handlers, addressable by short name in ``--handler`` and in manifests.

=================== ===========================================================================
name                module
=================== ===========================================================================
base_handler        ``modelserve_handlers.base``: a JSON array in, the model's output row out
image_classifier    ``modelserve_handlers.image_classifier``: image in, top-k ``{label: prob}``
image_segmenter     ``modelserve_handlers.image_segmenter``: image in, per-pixel class map
object_detector     ``modelserve_handlers.object_detector``: image in, ``[{label: box, "score": s}]``
text_classifier     ``modelserve_handlers.text_classifier``: text in, ``{label: prob}``
tensor              ``modelserve_handlers.tensor``
=================== ===========================================================================

Each handler module defines exactly one class (the worker instantiates the single class a handler
module defines); shared code lives in the helper modules ``_common`` (request cycle, labels,
config), ``_vision`` (Pillow decoding, torch transforms) and ``_text`` (tokenisation, vocabulary).
Settings come from the ``handler:`` section of the archive's model-config.yaml; see
docs/handlers.md.
"""
