"""Comparison for bench/serve_load.py: LitServe with batching, on the same model and preprocessing.

MNIST_MODEL_PATH=mnist_cnn.pt python -m bench.litserve_server --port 8002
"""

import argparse
import os
from typing import Any

import litserve as ls
import torch
from fastapi import Request

from app.config import LOW_CONFIDENCE
from app.predict.answers import answered, request_id
from app.predict.preprocess import preprocess
from models.checkpoint import load_checkpoint


class DigitAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.checkpoint = load_checkpoint(os.environ.get("MNIST_MODEL_PATH", "mnist_cnn.pt"), device)

    def decode_request(self, request: Request) -> torch.Tensor:
        # LitServe hands over the parsed form (a Request annotation asks for it)
        form: Any = request
        return preprocess(form["file"].file.read())

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.checkpoint.model(x)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        return answered(request_id(), output.unsqueeze(0), self.checkpoint, LOW_CONFIDENCE, None)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = DigitAPI(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
