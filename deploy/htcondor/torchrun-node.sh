#!/bin/bash
# One node of a multi-node DDP job in HTCondor's parallel universe (rootml-train.sub): node 0
# publishes its host name in the job ad with condor_chirp, the others read it, then every node
# runs one torchrun agent that meets the others in the c10d rendezvous on node 0.
# Arguments: GPUS_PER_NODE RUN_FOLDER; the training inputs are in the job's scratch folder.
set -euo pipefail

GPUS_PER_NODE=$1
RUN=$2
NODE=${_CONDOR_PROCNO:?not in the parallel universe}
NODES=${_CONDOR_NPROCS:?not in the parallel universe}
CHIRP=$(condor_config_val LIBEXEC)/condor_chirp

if [ "$NODE" = 0 ]; then
  HEAD=$(hostname -f)
  "$CHIRP" set_job_attr RootmlHead "\"$HEAD\""
else
  HEAD=""
  for _ in $(seq 300); do
    HEAD=$("$CHIRP" get_job_attr RootmlHead 2>/dev/null | tr -d '"') || true
    if [ -n "$HEAD" ] && [ "$HEAD" != "UNDEFINED" ]; then break; fi
    sleep 2
  done
  if [ -z "$HEAD" ] || [ "$HEAD" = "UNDEFINED" ]; then
    echo "node $NODE: node 0 never published its host name" >&2
    exit 1
  fi
fi

export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec python3 -m torch.distributed.run \
  --nnodes="$NODES" \
  --node-rank="$NODE" \
  --nproc-per-node="$GPUS_PER_NODE" \
  --rdzv-backend=c10d \
  --rdzv-endpoint="$HEAD:29500" \
  --rdzv-id="condor-$_CONDOR_CLUSTER_ID" \
  --max-restarts=3 \
  -m rootml train \
  --files files.txt --labels labels.txt --model model.py --params params.json \
  --out "$RUN" --auto-resume
