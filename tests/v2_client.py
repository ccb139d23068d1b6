"""Calling the v2 protocol the way its users do: with Triton's own client library, tritonclient, over
HTTP (JSON or binary tensors) and gRPC (raw_input_contents, as tritonclient sends them, or the typed
contents other clients use)."""

import base64
from typing import Any

import grpc
import numpy as np
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.signature import SIGNATURE
from tests.images import encode

OUTPUTS = ("log_probs", "probs", "digit", "not_a_digit", "ood_score")


def as_inputs(kind: str, images: torch.Tensor) -> tuple[str, np.ndarray]:
    """MNIST images (N x 28 x 28 uint8) as the tensor of one input kind: its datatype and array."""
    pixels = images.numpy()
    if kind == "input":  # normalised by the client, as training does
        grey = pixels.astype(np.float32).reshape(-1, 1, 28, 28)
        mean, std = np.float32(SIGNATURE.input.mean), np.float32(SIGNATURE.input.std)
        return "FP32", ((grey / np.float32(255.0) - mean) / std)
    if kind == "pixels":
        return "UINT8", pixels
    return "BYTES", np.array([encode(image) for image in pixels], dtype=np.object_)


def infer_http(url: str, kind: str, images: torch.Tensor, binary: bool, **options: Any) -> Any:
    """One tritonclient HTTP request asking for every output, JSON or binary both ways."""
    datatype, array = as_inputs(kind, images)
    tensor = triton_http.InferInput(kind, list(array.shape), datatype)
    if datatype == "BYTES" and not binary:  # JSON holds no raw bytes: images travel as base64 text
        array = np.array([base64.b64encode(item) for item in array], dtype=np.object_)
    tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
    with triton_http.InferenceServerClient(url, network_timeout=120) as client:
        return client.infer("mnist", [tensor], outputs=outputs, **options)


def infer_grpc(url: str, kind: str, images: torch.Tensor, **options: Any) -> Any:
    """One tritonclient gRPC request (raw_input_contents) asking for every output."""
    datatype, array = as_inputs(kind, images)
    tensor = triton_grpc.InferInput(kind, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    outputs = [triton_grpc.InferRequestedOutput(name) for name in OUTPUTS]
    with triton_grpc.InferenceServerClient(url) as client:
        return client.infer("mnist", [tensor], outputs=outputs, client_timeout=120, **options)


def typed_contents_request(kind: str, images: torch.Tensor) -> Any:
    """A ModelInferRequest carrying its elements in typed contents (fp32_contents, uint_contents,
    bytes_contents), built with tritonclient's own protobuf messages."""
    datatype, array = as_inputs(kind, images)
    request = service_pb2.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name=kind, datatype=datatype, shape=list(array.shape))
    if datatype == "FP32":
        tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
    elif datatype == "UINT8":
        tensor.contents.uint_contents.extend(array.reshape(-1).tolist())
    else:
        tensor.contents.bytes_contents.extend(list(array))
    for name in OUTPUTS:
        request.outputs.add(name=name)
    return request


def call_grpc(url: str, method: str, request: Any) -> Any:
    """One call with tritonclient's generated stub: the answer, or grpc.RpcError."""
    with grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1)]) as channel:
        return getattr(service_pb2_grpc.GRPCInferenceServiceStub(channel), method)(request, timeout=120)


def raw_outputs(response: Any) -> dict[str, np.ndarray]:
    """A ModelInferResponse's outputs, shaped, from raw_output_contents."""
    types = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}
    return {
        output.name: np.frombuffer(raw, dtype=types[output.datatype]).reshape(list(output.shape))
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def one_digit_request() -> Any:
    """The smallest valid ModelInferRequest: one 28x28 UINT8 image (a ramp) in raw_input_contents."""
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28])
    request.raw_input_contents.append(bytes(range(28)) * 28)
    return request
