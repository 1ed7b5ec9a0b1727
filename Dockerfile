# segtool serve in a container: the light install (ONNX Runtime, no torch) with the serve
# extra, serving the built-in road model on port 8000. See docs/serving.md.
#   docker build -t segtool-serve .
#   docker run --rm -p 8000:8000 segtool-serve
# The wheels (ONNX Runtime, OpenCV headless) bring their own libraries: no apt packages.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY segtool ./segtool
RUN pip install --no-cache-dir '.[serve]' && rm -rf /src

RUN useradd --create-home segtool
USER segtool
WORKDIR /home/segtool
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# SIGTERM (docker stop) answers the requests in flight, then exits 0.
CMD ["segtool", "serve", "camvid", "--host", "0.0.0.0"]
