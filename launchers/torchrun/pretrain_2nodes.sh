#!/usr/bin/env bash
# Example: dense pretraining on 2 nodes x 8 GPUs with torchrun (run this on every node).
# NODE_RANK=0 on the first node; MASTER_ADDR is the first node's address.
# On Slurm, `gts launch slurm --nodes 2 --gpus-per-node 8 -- pretrain ...` does this for you.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the first node}" "${NODE_RANK:?set NODE_RANK (0 on the first node)}"
CONFIG=${CONFIG:-my_run.yaml}
RUN_DIR=${RUN_DIR:-runs/pretrain}
exec torchrun --nnodes 2 --nproc-per-node 8 --node-rank "$NODE_RANK" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:29500" \
  -m gts_megatron.cli pretrain --config "$CONFIG" --run-dir "$RUN_DIR" \
  --set parallel.tensor=8 --set parallel.sequence_parallel=true
