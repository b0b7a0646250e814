"""gRPC front ends: TorchServe-compatible and Open Inference Protocol (KServe v2)."""
