# mnist-serve: one image for the API (`python -m app`, the default command) and the trainer
# (`python -m training`). PyTorch comes from TORCH_INDEX_URL: by default PyTorch's CPU-only wheels
# (a much smaller image); for NVIDIA GPUs pass a CUDA index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
# (PyPI's own torch wheels are CUDA builds too: --build-arg TORCH_INDEX_URL=https://pypi.org/simple)

# One stage: PyTorch is most of the image (about 1 GB CPU-only, 6 GB with CUDA), and a build stage
# copied into a final one would hold it twice on the builder's disk while building. Wheels need no
# compilers, so nothing would be left behind anyway.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MNIST_HOST=0.0.0.0 \
    MNIST_PORT=8000 \
    MNIST_MODEL_PATH=/models/mnist_cnn.pt \
    MNIST_STATE_DIR=/state \
    MNIST_DATA_DIR=/data
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /models /state /data \
 && chown app:app /models /state /data \
 && python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so source or README edits do not reinstall
# PyTorch. Empty package folders and README stand in for the real ones until they are copied below.
COPY pyproject.toml ./
RUN mkdir app training models && touch README.md \
 && pip install --extra-index-url "$TORCH_INDEX_URL" . \
 && pip uninstall -y mnist-serve \
 && rm -rf /src/*
COPY README.md pyproject.toml ./
COPY app ./app
COPY training ./training
COPY models ./models
RUN pip install --no-deps . && rm -rf /src
USER app
WORKDIR /home/app
# HTTP, and the v2 protocol over gRPC (MNIST_GRPC_PORT)
EXPOSE 8000 8001
# No curl in slim images: ask /readyz with Python's standard library.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MNIST_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "app"]
