"""Generated protobuf/gRPC stubs for modelserve's gRPC APIs.

Do not edit the modules in this package by hand: edit ``protos/*.proto`` and
run ``python tools/gen_protos.py`` (``--check`` verifies they are current).

Modules (``*_pb2`` messages, ``*_pb2_grpc`` stubs/servicers):

* ``inference_pb2``/``inference_pb2_grpc`` -- TorchServe inference API,
  ``org.pytorch.serve.grpc.inference.InferenceAPIsService``.
* ``management_pb2``/``management_pb2_grpc`` -- TorchServe management API,
  ``org.pytorch.serve.grpc.management.ManagementAPIsService``.
* ``grpc_service_pb2``/``grpc_service_pb2_grpc`` -- Open Inference Protocol
  (KServe v2) in Triton's layout, ``inference.GRPCInferenceService``.
* ``model_config_pb2`` -- Triton ``inference.ModelConfig`` and friends.
* ``rpc_status_pb2`` -- ``google.rpc.Status`` (used by
  ``PredictionResponse.status``).

All descriptors live in the private pool ``_pool.POOL``, not protobuf's default
pool, so these modules coexist with tritonclient/kserve stubs in one process.
Consequence: message classes here are distinct from same-named classes of other
packages (e.g. ``google.rpc.status_pb2.Status``); convert with
``ours.FromString(theirs.SerializeToString())`` if ever needed. Requests typed
``google.protobuf.Empty`` use the standard ``google.protobuf.empty_pb2.Empty``.
"""
