"""gRPC front ends: TorchServe-compatible and Open Inference Protocol (KServe v2)."""
import os as _os

# The frontend forks worker processes while gRPC's threads run; gRPC's fork handlers then crash the
# child between fork and exec (SIGSEGV). Workers exec at once and never use gRPC: turn them off
# before grpc is first imported (an explicit GRPC_ENABLE_FORK_SUPPORT setting wins).
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
