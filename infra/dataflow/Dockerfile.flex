# Launcher image of the radio-evaluate flex template. The job itself runs on the worker image
# (infra/dataflow/Dockerfile), passed as --sdk_container_image in the launch environment.
#   docker build -f infra/dataflow/Dockerfile.flex -t REGION-docker.pkg.dev/PROJECT/radio/eval-launcher:TAG .
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base

RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /template
COPY requirements.txt setup.py MANIFEST.in README.md ./
COPY preprocess ./preprocess
COPY pipelines ./pipelines
COPY radio ./radio
COPY eval ./eval
COPY configs ./configs
COPY infra/dataflow/flex_evaluate.py ./flex_evaluate.py
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -e . && pip install --no-cache-dir --no-deps lpips==0.1.4
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/flex_evaluate.py
ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py
