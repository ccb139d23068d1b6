"""Baseline for bench/serve_load.py: the FastAPI endpoint people write first.

The model is called once per request (no batching) from a sync endpoint, which FastAPI runs in
its thread pool; the preprocessing is ours, so only the serving design differs.

    MNIST_MODEL_PATH=mnist_cnn.pt uvicorn bench.naive_server:app --port 8001
"""

import os
from typing import Annotated

import torch
from fastapi import FastAPI, File, UploadFile

from app.config import LOW_CONFIDENCE
from app.predict.answers import answered, request_id
from app.predict.preprocess import preprocess
from models.checkpoint import load_checkpoint

device = torch.device("cuda" if os.environ.get("MNIST_DEVICE") == "cuda" else "cpu")
checkpoint = load_checkpoint(os.environ.get("MNIST_MODEL_PATH", "mnist_cnn.pt"), device)
app = FastAPI()


@app.post("/predict")
def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
    x = preprocess(file.file.read())
    with torch.inference_mode():
        log_probs = checkpoint.model(x.unsqueeze(0).to(device)).cpu()
    return answered(request_id(), log_probs, checkpoint, LOW_CONFIDENCE, None)[0]
