# One image for the offline job and the server (CPU torch wheel).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY models ./models
COPY offline ./offline
COPY service ./service
COPY loadtest ./loadtest
RUN pip install ".[offline,serve,store]"
EXPOSE 8000
CMD ["prerank", "serve", "--store", "redis://redis:6379/0", "--host", "0.0.0.0", "--port", "8000"]
