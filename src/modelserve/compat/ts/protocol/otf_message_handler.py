"""``ts.protocol.otf_message_handler``: only what handlers import from it (older TorchServe releases
exposed ``send_intermediate_predict_response`` here). modelserve's worker protocol is its own."""
from ..handler_utils.utils import send_intermediate_predict_response

__all__ = ["send_intermediate_predict_response"]
