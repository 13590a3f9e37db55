# normtrain on NVIDIA's NGC PyTorch container (PyTorch, CUDA, NCCL and DALI preinstalled).
#   docker build -t normtrain .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v /data:/data -v $PWD/runs:/workspace/runs normtrain \
#       --recipe resnet50-imagenet --data /data/imagenet --nproc-per-node auto
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 -v /data:/data normtrain \
#       doctor --data /data/imagenet          # check the machine first (README: "Checking a machine")
# Multi-node over InfiniBand: README, "Docker (multi-GPU servers)".
ARG BASE=nvcr.io/nvidia/pytorch:26.10-py3
FROM ${BASE}
WORKDIR /opt/normtrain
COPY setup.py README.md ./
COPY normtrain ./normtrain
COPY recipes ./recipes
COPY tools ./tools
COPY docker/entrypoint.sh /opt/normtrain/entrypoint.sh
# --no-deps keeps the image's own torch, torchvision and DALI; add only the light pure-Python deps
# and timm (optim.name lamb/lars); timm asks for any torch, which the image's satisfies.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir pyyaml tqdm tensorboard matplotlib timm \
 && python -c "import normtrain.cli, torch, nvidia.dali, timm.optim; print('normtrain ok, torch', torch.__version__)"
WORKDIR /workspace
# Chain to NGC's own entrypoint: it prints the container banner and runs its driver and
# CUDA-compatibility checks (warning about a missing GPU, an old driver, a small shm), then
# execs its arguments, here `normtrain ...`; docker/entrypoint.sh sends the banner to stderr,
# so that stdout carries normtrain's output only (`... runs --csv > runs.csv`).
ENTRYPOINT ["/opt/normtrain/entrypoint.sh"]
CMD ["--help"]
