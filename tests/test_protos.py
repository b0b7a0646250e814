"""Checks for the .proto files in protos/ and the stubs generated from them.

* the checked-in stubs are what tools/gen_protos.py produces;
* the stubs import and expose the TorchServe and Open Inference Protocol
  (Triton layout) services under their exact gRPC method paths;
* field numbers of the wire-relevant messages equal TorchServe 0.12's and
  Triton's (hard-coded tables below; changing one breaks existing clients);
* with tritonclient installed: tritonclient's own messages round-trip through
  ours in both directions and tritonclient's client talks to a servicer built
  from our stubs.
"""

from __future__ import annotations

import importlib
import pickle
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, empty_pb2, json_format

from modelserve.grpc._generated import (
    _pool,
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
    model_config_pb2,
    rpc_status_pb2,
)

REPO = Path(__file__).resolve().parent.parent
GEN_TOOL = REPO / "tools" / "gen_protos.py"
GEN_DIR = REPO / "src" / "modelserve" / "grpc" / "_generated"

TS_INF = "org.pytorch.serve.grpc.inference"
TS_MGMT = "org.pytorch.serve.grpc.management"


# --------------------------------------------------------------------- (a)


def test_generated_stubs_are_fresh():
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed")
    import importlib.metadata

    installed = importlib.metadata.version("grpcio-tools")
    recorded = _pool.GENERATED_WITH.split()[-1]
    if installed != recorded:
        pytest.skip(
            f"stubs were generated with grpcio-tools {recorded}, installed is {installed}; "
            "output differs between protoc releases"
        )
    proc = subprocess.run(
        [sys.executable, str(GEN_TOOL), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"stale stubs, run `python tools/gen_protos.py`:\n{proc.stdout}{proc.stderr}"


def test_generated_code_is_package_relative_and_unpinned():
    for path in sorted(GEN_DIR.glob("*.py*")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^import \w+_pb2", text, re.M), f"{path.name}: absolute sibling import"
        assert "from google.rpc import" not in text, f"{path.name}: needs googleapis-common-protos"
        assert "ValidateProtobufRuntimeVersion" not in text, path.name
        assert "GRPC_GENERATED_VERSION" not in text, path.name
        assert "_descriptor_pool.Default()" not in text, f"{path.name}: uses the global descriptor pool"


# --------------------------------------------------------------------- (b)


class _RecordingChannel:
    """Stands in for grpc.Channel; records (method path -> call kind)."""

    def __init__(self):
        self.calls: dict[str, str] = {}

    def _record(self, kind):
        def factory(path, *args, **kwargs):
            self.calls[path] = kind
            return lambda *a, **k: None

        return factory

    def __getattr__(self, name):
        if name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(name)
        raise AttributeError(name)


UU, US, SS = "unary_unary", "unary_stream", "stream_stream"

TORCHSERVE_INFERENCE_METHODS = {
    f"/{TS_INF}.InferenceAPIsService/Ping": UU,
    f"/{TS_INF}.InferenceAPIsService/Predictions": UU,
    f"/{TS_INF}.InferenceAPIsService/StreamPredictions": US,
    f"/{TS_INF}.InferenceAPIsService/StreamPredictions2": SS,
}

TORCHSERVE_MANAGEMENT_METHODS = {
    f"/{TS_MGMT}.ManagementAPIsService/{m}": UU
    for m in ("DescribeModel", "ListModels", "RegisterModel", "ScaleWorker", "SetDefault", "UnregisterModel")
}

OIP_METHODS = {
    f"/inference.GRPCInferenceService/{m}": (SS if m == "ModelStreamInfer" else UU)
    for m in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
        "TraceSetting", "LogSettings",
    )
}


@pytest.mark.parametrize(
    "grpc_module, stub, expected",
    [
        (inference_pb2_grpc, "InferenceAPIsServiceStub", TORCHSERVE_INFERENCE_METHODS),
        (management_pb2_grpc, "ManagementAPIsServiceStub", TORCHSERVE_MANAGEMENT_METHODS),
        (grpc_service_pb2_grpc, "GRPCInferenceServiceStub", OIP_METHODS),
    ],
    ids=["torchserve-inference", "torchserve-management", "open-inference"],
)
def test_stub_method_paths(grpc_module, stub, expected):
    channel = _RecordingChannel()
    getattr(grpc_module, stub)(channel)
    assert channel.calls == expected


@pytest.mark.parametrize(
    "pb2, service, full_name",
    [
        (inference_pb2, "InferenceAPIsService", f"{TS_INF}.InferenceAPIsService"),
        (management_pb2, "ManagementAPIsService", f"{TS_MGMT}.ManagementAPIsService"),
        (grpc_service_pb2, "GRPCInferenceService", "inference.GRPCInferenceService"),
    ],
)
def test_service_descriptors(pb2, service, full_name):
    svc = pb2.DESCRIPTOR.services_by_name[service]
    assert svc.full_name == full_name
    grpc_module = importlib.import_module(pb2.__name__ + "_grpc")
    for cls in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
        assert hasattr(grpc_module, cls)


def test_rpc_message_types():
    ts = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"].methods_by_name
    assert ts["Ping"].input_type.full_name == "google.protobuf.Empty"
    assert ts["Ping"].output_type.full_name == f"{TS_INF}.TorchServeHealthResponse"
    for m in ("Predictions", "StreamPredictions", "StreamPredictions2"):
        assert ts[m].input_type.full_name == f"{TS_INF}.PredictionsRequest"
        assert ts[m].output_type.full_name == f"{TS_INF}.PredictionResponse"
    oip = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert oip["ModelStreamInfer"].input_type.full_name == "inference.ModelInferRequest"
    assert oip["ModelStreamInfer"].output_type.full_name == "inference.ModelStreamInferResponse"
    assert oip["ModelConfig"].output_type.full_name == "inference.ModelConfigResponse"


def test_private_descriptor_pool_and_pickle():
    # Our descriptors live in a private pool, so tritonclient / kserve /
    # mlserver stubs (same "inference" package) can be imported alongside.
    for mod in (inference_pb2, management_pb2, grpc_service_pb2, model_config_pb2, rpc_status_pb2):
        assert mod.DESCRIPTOR.pool is _pool.POOL, mod.__name__
    assert _pool.POOL.FindMessageTypeByName("inference.ModelInferRequest") is grpc_service_pb2.ModelInferRequest.DESCRIPTOR
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "python":
        # (The pure-Python backend's symbol database also records every
        # generated message in the default pool; upb/cpp do not.)
        default = descriptor_pool.Default()
        for name in (f"{TS_INF}.PredictionsRequest", f"{TS_MGMT}.ManagementResponse"):
            with pytest.raises(KeyError):
                default.FindMessageTypeByName(name)
    assert grpc_service_pb2.ModelInferRequest.__module__ == grpc_service_pb2.__name__

    req = inference_pb2.PredictionsRequest(model_name="m", input={"data": b"\x00\x01"}, sequence_id="seq-1")
    assert pickle.loads(pickle.dumps(req)) == req
    assert req.HasField("sequence_id")
    resp = inference_pb2.PredictionResponse(prediction=b"ok")
    assert not resp.HasField("status")
    resp.status.CopyFrom(rpc_status_pb2.Status(code=5, message="not found"))
    assert inference_pb2.PredictionResponse.FromString(resp.SerializeToString()).status.code == 5


# --------------------------------------------------------------------- (c)

# message full name -> {field name: field number}; from TorchServe 0.12
# (frontend/server/src/main/resources/proto/*.proto) and Triton
# (triton-inference-server/common protobuf/{grpc_service,model_config}.proto,
# as shipped in tritonclient 2.73).
FIELD_NUMBERS: dict[str, dict[str, int]] = {
    # TorchServe inference
    f"{TS_INF}.PredictionsRequest": {"model_name": 1, "model_version": 2, "input": 3, "sequence_id": 4},
    f"{TS_INF}.PredictionResponse": {"prediction": 1, "sequence_id": 2, "status": 3},
    f"{TS_INF}.TorchServeHealthResponse": {"health": 1},
    "google.rpc.Status": {"code": 1, "message": 2, "details": 3},
    # TorchServe management
    f"{TS_MGMT}.ManagementResponse": {"msg": 1},
    f"{TS_MGMT}.DescribeModelRequest": {"model_name": 1, "model_version": 2, "customized": 3},
    f"{TS_MGMT}.ListModelsRequest": {"limit": 1, "next_page_token": 2},
    f"{TS_MGMT}.RegisterModelRequest": {
        "batch_size": 1, "handler": 2, "initial_workers": 3, "max_batch_delay": 4,
        "model_name": 5, "response_timeout": 6, "runtime": 7, "synchronous": 8,
        "url": 9, "s3_sse_kms": 10, "startup_timeout": 11,
    },
    f"{TS_MGMT}.ScaleWorkerRequest": {
        "model_name": 1, "model_version": 2, "max_worker": 3, "min_worker": 4,
        "number_gpu": 5, "synchronous": 6, "timeout": 7,
    },
    f"{TS_MGMT}.SetDefaultRequest": {"model_name": 1, "model_version": 2},
    f"{TS_MGMT}.UnregisterModelRequest": {"model_name": 1, "model_version": 2},
    # Open Inference Protocol / Triton grpc_service.proto
    "inference.ServerLiveResponse": {"live": 1},
    "inference.ServerReadyResponse": {"ready": 1},
    "inference.ModelReadyRequest": {"name": 1, "version": 2},
    "inference.ModelReadyResponse": {"ready": 1},
    "inference.ServerMetadataResponse": {"name": 1, "version": 2, "extensions": 3},
    "inference.ModelMetadataRequest": {"name": 1, "version": 2},
    "inference.ModelMetadataResponse": {"name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5},
    "inference.ModelMetadataResponse.TensorMetadata": {"name": 1, "datatype": 2, "shape": 3},
    "inference.InferParameter": {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5,
    },
    "inference.InferTensorContents": {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4,
        "uint64_contents": 5, "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8,
    },
    "inference.ModelInferRequest": {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
        "inputs": 5, "outputs": 6, "raw_input_contents": 7,
    },
    "inference.ModelInferRequest.InferInputTensor": {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    },
    "inference.ModelInferRequest.InferRequestedOutputTensor": {"name": 1, "parameters": 2},
    "inference.ModelInferResponse": {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
        "outputs": 5, "raw_output_contents": 6,
    },
    "inference.ModelInferResponse.InferOutputTensor": {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    },
    "inference.ModelStreamInferResponse": {"error_message": 1, "infer_response": 2},
    "inference.ModelConfigRequest": {"name": 1, "version": 2},
    "inference.ModelConfigResponse": {"config": 1},
    "inference.ModelStatisticsRequest": {"name": 1, "version": 2},
    "inference.ModelStatisticsResponse": {"model_stats": 1},
    "inference.ModelStatistics": {
        "name": 1, "version": 2, "last_inference": 3, "inference_count": 4, "execution_count": 5,
        "inference_stats": 6, "batch_stats": 7, "memory_usage": 8, "response_stats": 9,
    },
    "inference.StatisticDuration": {"count": 1, "ns": 2},
    "inference.InferStatistics": {
        "success": 1, "fail": 2, "queue": 3, "compute_input": 4, "compute_infer": 5,
        "compute_output": 6, "cache_hit": 7, "cache_miss": 8,
    },
    "inference.InferBatchStatistics": {"batch_size": 1, "compute_input": 2, "compute_infer": 3, "compute_output": 4},
    "inference.InferResponseStatistics": {
        "compute_infer": 1, "compute_output": 2, "success": 3, "fail": 4, "empty_response": 5, "cancel": 6,
    },
    "inference.MemoryUsage": {"type": 1, "id": 2, "byte_size": 3},
    "inference.RepositoryIndexRequest": {"repository_name": 1, "ready": 2},
    "inference.RepositoryIndexResponse.ModelIndex": {"name": 1, "version": 2, "state": 3, "reason": 4},
    "inference.RepositoryModelLoadRequest": {"repository_name": 1, "model_name": 2, "parameters": 3},
    "inference.RepositoryModelUnloadRequest": {"repository_name": 1, "model_name": 2, "parameters": 3},
    # Triton model_config.proto
    "inference.ModelConfig": {
        "name": 1, "platform": 2, "backend": 17, "runtime": 25, "version_policy": 3,
        "max_batch_size": 4, "input": 5, "output": 6, "batch_input": 20, "batch_output": 21,
        "optimization": 12, "dynamic_batching": 11, "sequence_batching": 13,
        "ensemble_scheduling": 15, "instance_group": 7, "default_model_filename": 8,
        "cc_model_filenames": 9, "metric_tags": 10, "parameters": 14, "model_warmup": 16,
        "model_operations": 18, "model_transaction_policy": 19, "model_repository_agents": 23,
        "response_cache": 24, "model_metrics": 26,
    },
    "inference.ModelInput": {
        "name": 1, "data_type": 2, "format": 3, "dims": 4, "reshape": 5, "is_shape_tensor": 6,
        "allow_ragged_batch": 7, "optional": 8, "is_non_linear_format_io": 9,
    },
    "inference.ModelOutput": {
        "name": 1, "data_type": 2, "dims": 3, "reshape": 5, "label_filename": 4,
        "is_shape_tensor": 6, "is_non_linear_format_io": 7,
    },
    "inference.ModelTensorReshape": {"shape": 1},
    "inference.ModelDynamicBatching": {
        "preferred_batch_size": 1, "max_queue_delay_microseconds": 2, "preserve_ordering": 3,
        "priority_levels": 4, "default_priority_level": 5, "default_queue_policy": 6,
        "priority_queue_policy": 7,
    },
    "inference.ModelQueuePolicy": {
        "timeout_action": 1, "default_timeout_microseconds": 2, "allow_timeout_override": 3, "max_queue_size": 4,
    },
    "inference.ModelInstanceGroup": {
        "name": 1, "kind": 4, "count": 2, "rate_limiter": 6, "gpus": 3, "secondary_devices": 8,
        "profile": 5, "passive": 7, "host_policy": 9,
    },
    "inference.ModelVersionPolicy": {"latest": 1, "all": 2, "specific": 3},
    "inference.ModelParameter": {"string_value": 1},
    "inference.ModelTransactionPolicy": {"decoupled": 1},
}

ENUM_VALUES: dict[str, dict[str, int]] = {
    "inference.DataType": {
        "TYPE_INVALID": 0, "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4,
        "TYPE_UINT64": 5, "TYPE_INT8": 6, "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9,
        "TYPE_FP16": 10, "TYPE_FP32": 11, "TYPE_FP64": 12, "TYPE_STRING": 13, "TYPE_BF16": 14,
    },
    "inference.ModelInstanceGroup.Kind": {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2, "KIND_MODEL": 3},
    "inference.ModelInput.Format": {"FORMAT_NONE": 0, "FORMAT_NHWC": 1, "FORMAT_NCHW": 2},
}


@pytest.mark.parametrize("message", sorted(FIELD_NUMBERS))
def test_field_numbers(message):
    desc = _pool.POOL.FindMessageTypeByName(message)
    actual = {f.name: f.number for f in desc.fields}
    assert actual == FIELD_NUMBERS[message]


@pytest.mark.parametrize("enum", sorted(ENUM_VALUES))
def test_enum_values(enum):
    desc = _pool.POOL.FindEnumTypeByName(enum)
    assert {v.name: v.number for v in desc.values} == ENUM_VALUES[enum]


def test_field_shapes():
    """Types/labels of the fields that matter most on the wire."""
    F = grpc_service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name
    raw = F["raw_input_contents"]
    assert raw.type == raw.TYPE_BYTES and _is_repeated(raw)
    assert F["parameters"].message_type.GetOptions().map_entry
    raw_out = grpc_service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"]
    assert raw_out.type == raw_out.TYPE_BYTES and _is_repeated(raw_out)

    param = grpc_service_pb2.InferParameter.DESCRIPTOR
    assert [f.name for f in param.oneofs_by_name["parameter_choice"].fields] == [
        "bool_param", "int64_param", "string_param", "double_param", "uint64_param",
    ]
    sched = model_config_pb2.ModelConfig.DESCRIPTOR.oneofs_by_name["scheduling_choice"]
    assert [f.name for f in sched.fields] == ["dynamic_batching", "sequence_batching", "ensemble_scheduling"]

    P = inference_pb2.PredictionsRequest.DESCRIPTOR.fields_by_name
    assert P["input"].message_type.GetOptions().map_entry
    assert P["input"].message_type.fields_by_name["value"].type == P["input"].TYPE_BYTES
    assert P["sequence_id"].containing_oneof is not None  # proto3 `optional`
    status = inference_pb2.PredictionResponse.DESCRIPTOR.fields_by_name["status"]
    assert status.message_type.full_name == "google.rpc.Status"


def _is_repeated(field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 6
    if is_repeated is not None:
        return bool(is_repeated)
    return field.label == field.LABEL_REPEATED


# --------------------------------------------------------------------- (d)


def _tritonclient():
    try:
        import tritonclient.grpc as tgrpc
        from tritonclient.grpc import model_config_pb2 as tc_model_config_pb2
        from tritonclient.grpc import service_pb2 as tc_service_pb2
        from tritonclient.grpc import service_pb2_grpc as tc_service_pb2_grpc
    except Exception as exc:  # ImportError, or protobuf VersionError from its gencode
        pytest.skip(f"tritonclient[grpc] not usable here: {type(exc).__name__}: {exc}")
    return tgrpc, tc_service_pb2, tc_service_pb2_grpc, tc_model_config_pb2


def _same(a, b):
    """Serialize deterministically on both sides and compare bytes + JSON view."""
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert json_format.MessageToDict(a) == json_format.MessageToDict(b)


def _fill_infer_request(pb):
    req = pb.ModelInferRequest(model_name="resnet", model_version="3", id="req-7")
    req.parameters["priority"].int64_param = -2
    req.parameters["flag"].bool_param = True
    req.parameters["mode"].string_param = "fast"
    req.parameters["temp"].double_param = 0.25
    req.parameters["seed"].uint64_param = 2**63 + 5
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 3])
    t.parameters["binary_data_size"].int64_param = 24
    t2 = req.inputs.add(name="INPUT1", datatype="INT64", shape=[2])
    t2.contents.int64_contents.extend([1, -1])
    t3 = req.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    t3.contents.bytes_contents.append(b"hello")
    o = req.outputs.add(name="OUTPUT0")
    o.parameters["classification"].int64_param = 3
    req.raw_input_contents.append(bytes(range(24)))
    return req


def _fill_infer_response(pb):
    resp = pb.ModelInferResponse(model_name="resnet", model_version="3", id="req-7")
    resp.parameters["triton_final_response"].bool_param = True
    out = resp.outputs.add(name="OUTPUT0", datatype="FP32", shape=[2, 3])
    out.parameters["binary_data_size"].int64_param = 24
    out2 = resp.outputs.add(name="OUTPUT1", datatype="BOOL", shape=[2])
    out2.contents.bool_contents.extend([True, False])
    resp.raw_output_contents.append(bytes(24))
    return resp


def _fill_model_config(svc_pb, cfg_pb):
    resp = svc_pb.ModelConfigResponse()
    c = resp.config
    c.name, c.platform, c.backend, c.max_batch_size = "resnet", "pytorch_libtorch", "pytorch", 8
    i = c.input.add(name="INPUT0", data_type=cfg_pb.TYPE_FP32, dims=[3, 224, 224])
    i.format = cfg_pb.ModelInput.FORMAT_NCHW
    c.output.add(name="OUTPUT0", data_type=cfg_pb.TYPE_FP32, dims=[1000], label_filename="labels.txt")
    c.dynamic_batching.preferred_batch_size.extend([4, 8])
    c.dynamic_batching.max_queue_delay_microseconds = 5000
    c.instance_group.add(kind=cfg_pb.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1])
    c.parameters["handler"].string_value = "image_classifier"
    return resp


def _fill_statistics(pb):
    resp = pb.ModelStatisticsResponse()
    s = resp.model_stats.add(name="resnet", version="3", last_inference=1700000000000)
    s.inference_count, s.execution_count = 10, 4
    s.inference_stats.success.count, s.inference_stats.success.ns = 10, 123456
    s.inference_stats.queue.ns = 99
    s.batch_stats.add(batch_size=4).compute_infer.ns = 777
    s.memory_usage.add(type="GPU", id=0, byte_size=1 << 20)
    s.response_stats["0"].success.count = 10
    return resp


def _fill_stream_response(pb):
    r = pb.ModelStreamInferResponse(error_message="")
    r.infer_response.CopyFrom(_fill_infer_response(pb))
    return r


@pytest.mark.parametrize(
    "build", ["infer_request", "infer_response", "model_config", "statistics", "stream_response"]
)
def test_tritonclient_messages_roundtrip(build):
    _, tc_svc, _, tc_cfg = _tritonclient()
    builders = {
        "infer_request": lambda s, c: _fill_infer_request(s),
        "infer_response": lambda s, c: _fill_infer_response(s),
        "model_config": _fill_model_config,
        "statistics": lambda s, c: _fill_statistics(s),
        "stream_response": lambda s, c: _fill_stream_response(s),
    }
    theirs = builders[build](tc_svc, tc_cfg)
    ours = builders[build](grpc_service_pb2, model_config_pb2)
    _same(theirs, ours)

    # theirs -> ours
    parsed = type(ours).FromString(theirs.SerializeToString())
    _same(parsed, ours)
    # ours -> theirs
    parsed_back = type(theirs).FromString(ours.SerializeToString())
    _same(parsed_back, theirs)


def test_tritonclient_descriptors_agree():
    """Every field we declare exists in tritonclient's protos with the same
    number, type and label (tritonclient may be newer and have more)."""
    _, tc_svc, _, tc_cfg = _tritonclient()
    problems = []

    def walk(ours, theirs, path):
        for f in ours.fields:
            t = theirs.fields_by_name.get(f.name)
            if t is None:
                problems.append(f"{path}.{f.name}: not in tritonclient")
                continue
            mine = (f.number, f.type, _is_repeated(f), f.message_type.full_name if f.message_type else None,
                    f.enum_type.full_name if f.enum_type else None)
            other = (t.number, t.type, _is_repeated(t), t.message_type.full_name if t.message_type else None,
                     t.enum_type.full_name if t.enum_type else None)
            if mine != other:
                problems.append(f"{path}.{f.name}: ours {mine} != tritonclient {other}")
        for n in ours.nested_types:
            if n.name in theirs.nested_types_by_name:
                walk(n, theirs.nested_types_by_name[n.name], f"{path}.{n.name}")
            else:
                problems.append(f"{path}.{n.name}: not in tritonclient")

    for ours_file, theirs_file in ((grpc_service_pb2, tc_svc), (model_config_pb2, tc_cfg)):
        for name, desc in ours_file.DESCRIPTOR.message_types_by_name.items():
            other = theirs_file.DESCRIPTOR.message_types_by_name.get(name)
            if other is None:
                problems.append(f"{name}: not in tritonclient")
            else:
                walk(desc, other, name)
    assert not problems, "\n".join(problems)


def test_tritonclient_stub_uses_our_method_paths():
    _, _, tc_grpc, _ = _tritonclient()
    channel = _RecordingChannel()
    tc_grpc.GRPCInferenceServiceStub(channel)
    missing = {p: k for p, k in channel.calls.items() if OIP_METHODS.get(p) != k}
    assert not missing, f"tritonclient calls methods we do not declare: {missing}"


class _FakeOIPServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Minimal servicer built on our stubs, to drive the real tritonclient."""

    def ServerLive(self, request, context):
        return grpc_service_pb2.ServerLiveResponse(live=True)

    def ModelConfig(self, request, context):
        return _fill_model_config(grpc_service_pb2, model_config_pb2)

    def ModelStatistics(self, request, context):
        return _fill_statistics(grpc_service_pb2)

    def ModelInfer(self, request, context):
        # Echo every input back as an output of the same name, raw encoded.
        resp = grpc_service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor, raw in zip(request.inputs, request.raw_input_contents):
            resp.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            resp.raw_output_contents.append(raw)
        return resp


def test_tritonclient_against_our_servicer():
    tgrpc, _, _, _ = _tritonclient()
    np = pytest.importorskip("numpy")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_FakeOIPServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_live()
        cfg = client.get_model_config("resnet", as_json=True)["config"]
        assert cfg["name"] == "resnet" and cfg["max_batch_size"] == 8
        assert cfg["dynamic_batching"]["preferred_batch_size"] == [4, 8]
        stats = client.get_inference_statistics("resnet", as_json=True)
        assert stats["model_stats"][0]["inference_stats"]["success"]["ns"] == "123456"

        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp = tgrpc.InferInput("INPUT0", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        result = client.infer("resnet", [inp], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("INPUT0"), data)
        assert result.get_response().id == "r1"

        # Not implemented by the servicer -> UNIMPLEMENTED surfaces as an error.
        with pytest.raises(Exception, match="(?i)unimplemented|not implemented"):
            client.get_model_repository_index()
    finally:
        client.close()
        server.stop(None)


def test_torchserve_stubs_over_grpc():
    """Our TorchServe stubs work end to end (client + servicer)."""

    class Inference(inference_pb2_grpc.InferenceAPIsServiceServicer):
        def Ping(self, request, context):
            return inference_pb2.TorchServeHealthResponse(health='{"status": "Healthy"}')

        def StreamPredictions2(self, request_iterator, context):
            for req in request_iterator:
                yield inference_pb2.PredictionResponse(prediction=req.input["data"], sequence_id=req.sequence_id)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(Inference(), server)
    management_pb2_grpc.add_ManagementAPIsServiceServicer_to_server(
        management_pb2_grpc.ManagementAPIsServiceServicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
            assert "Healthy" in stub.Ping(empty_pb2.Empty()).health
            reqs = [inference_pb2.PredictionsRequest(model_name="m", input={"data": b"%d" % i}, sequence_id="s")
                    for i in range(3)]
            out = list(stub.StreamPredictions2(iter(reqs)))
            assert [(o.prediction, o.sequence_id) for o in out] == [(b"0", "s"), (b"1", "s"), (b"2", "s")]
            mgmt = management_pb2_grpc.ManagementAPIsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                mgmt.ListModels(management_pb2.ListModelsRequest(limit=10))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None)
