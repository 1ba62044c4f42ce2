# syntax=docker/dockerfile:1
# Two images from one file, both on the CPU torch wheel and the pinned constraints.txt:
#   docker build --target serve   -t hit-prerank-serve .    # the server only: no pandas/sklearn/offline code
#   docker build --target offline -t hit-prerank-offline .  # train + export + publish jobs
# Both run as an unprivileged user.

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 prerank
WORKDIR /app
COPY constraints.txt ./
RUN pip install -c constraints.txt torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md LICENSE ./

FROM base AS serve
COPY models ./models
COPY storage ./storage
COPY service ./service
COPY tools ./tools
COPY prerank ./prerank
RUN pip install -c constraints.txt ".[serve]"
USER prerank
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=20 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["prerank", "serve", "--store", "redis://redis:6379/0", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS offline
COPY models ./models
COPY storage ./storage
COPY offline ./offline
COPY service ./service
COPY tools ./tools
COPY prerank ./prerank
COPY loadtest ./loadtest
RUN pip install -c constraints.txt ".[offline,serve]"
USER prerank
WORKDIR /home/prerank
CMD ["prerank", "--help"]
