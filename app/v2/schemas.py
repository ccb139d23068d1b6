"""The v2 protocol's JSON documents over HTTP (the REST binding): parsed strictly, so what the schema
refuses the server refuses too, and shown in the OpenAPI description."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Parameters travel as JSON scalars (InferParameter: bool, int64, string, double).
Parameters = dict[str, bool | int | float | str]


class Strict(BaseModel):
    # Strict types (no "3" for 3), unknown fields ignored (the protocol's extensions add some).
    model_config = ConfigDict(strict=True, extra="ignore")


class InferInputTensor(Strict):
    name: str = Field(description="input, pixels or image (GET /v2/models/mnist lists them)")
    datatype: str = Field(description="FP32, UINT8 or BYTES, as the input's metadata says")
    shape: list[int] = Field(description="its dimensions, the number of images first")
    parameters: Parameters | None = Field(
        None,
        description="binary_data_size: the tensor's bytes follow the JSON (binary tensor data extension); "
        "invert (image only): auto, true or false, as for /predict",
    )
    data: list[Any] | None = Field(
        None,
        description="the elements, row-major, flat or nested; BYTES elements as base64 strings",
    )


class InferRequestedOutputTensor(Strict):
    name: str = Field(description="log_probs, probs or digit")
    parameters: Parameters | None = Field(None, description="binary_data: answer this output in binary")


class InferRequestBody(Strict):
    """POST /v2/models/mnist/infer: one input tensor; the outputs wanted (log_probs by default)."""

    id: str | None = Field(None, description="echoed in the answer")
    parameters: Parameters | None = Field(
        None, description="binary_data_output: answer every output in binary unless it says otherwise"
    )
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[InferRequestedOutputTensor] | None = None


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = Field(None, description="binary_data_size: its bytes follow the JSON")
    data: list[float | int] | None = Field(None, description="the elements, row-major, flat")


class InferResponseParameters(BaseModel):
    prediction_id: str = Field(
        description="names this request's predictions: row i's is `<prediction_id>-<i>` (as "
        "/predict names its own), in the logs beside the version at debug level"
    )


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: InferResponseParameters
    outputs: list[InferOutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the version served (empty while no model is loaded)")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    """Every v2 error answer, as the protocol says."""

    error: str = Field(description="what went wrong, in words")
