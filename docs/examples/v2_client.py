"""Ask the service for the digits of the first 64 MNIST test images with Triton's own client, over
HTTP and over gRPC: `python v2_client.py HTTP_ADDRESS GRPC_ADDRESS`."""

import sys

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient  # pip install "tritonclient[http,grpc]"

from training.data import load_mnist

http_address, grpc_address = sys.argv[1:3]
pixels = load_mnist().test_images[:64].numpy()  # uint8, 64 x 28 x 28, light digit on dark

# HTTP: the pixels travel as binary tensor data (no JSON numbers, no PNG).
tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
tensor.set_data_from_numpy(pixels)
client = httpclient.InferenceServerClient(http_address)
result = client.infer("mnist", [tensor], outputs=[httpclient.InferRequestedOutput("digit")])
print("HTTP:", result.as_numpy("digit")[:10])

# gRPC: the same request.
tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
tensor.set_data_from_numpy(pixels)
client = grpcclient.InferenceServerClient(grpc_address)
result = client.infer("mnist", [tensor], outputs=[grpcclient.InferRequestedOutput("digit")])
print("gRPC:", result.as_numpy("digit")[:10])
