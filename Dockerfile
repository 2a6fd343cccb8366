# DuPLUS server (`duplus serve`) for a GPU machine: see "On a GPU server" in README.md.
#   docker build -t duplus-server .
#   docker run --gpus all -p 8000:8000 -v $PWD/key.txt:/run/secrets/duplus_api_key:ro duplus-server --device cuda
# The CUDA build of PyTorch comes from PyPI (pinned as in pyproject.toml); the GPU driver comes from the
# host through the NVIDIA Container Toolkit. Without --gpus the server runs on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN useradd --create-home --uid 10001 duplus
WORKDIR /opt/duplus
COPY pyproject.toml README.md ./
COPY DuPLUSLib ./DuPLUSLib
# torch first and pinned: an unpinned torch requirement (monai's) would otherwise pick another build
RUN pip install torch==2.13.0 && pip install ".[server]"

USER duplus
EXPOSE 8000
# The key file comes from a read-only mount or a Docker/Kubernetes secret, never from an environment variable
# or the command line. Uploads and results live in /tmp/duplus inside the container only.
ENTRYPOINT ["duplus", "serve", "--host", "0.0.0.0", "--port", "8000", \
            "--api-key-file", "/run/secrets/duplus_api_key", "--work-dir", "/tmp/duplus"]
CMD ["--device", "auto"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import json, urllib.request; json.load(urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=4))"
