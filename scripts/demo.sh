#!/usr/bin/env bash
# The main job end to end on an embedded default: generate small NanoAOD-like ttH(bb) signal and
# background files, train the seed's MLP on them, export it to a model repository, and score
# the files with it. No network. Usage: bash scripts/demo.sh [OUT_DIR] (default: out/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/demo}"

# torch pinned: a bare `torch` pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel on these machines.
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e .

python3 examples/tth/make_data.py "$out/data" --events 20000
rootml inspect "$out/data/signal.root" > "$out/inspect.txt" && head -8 "$out/inspect.txt"
rootml train --files "$out/data/files.txt" --labels "$out/data/labels.txt" \
  --model examples/tth/model.py --params examples/tth/params.json --out "$out/run"
rootml export "$out/run" --name tth --repo "$out/models"
rootml predict --model "$out/models/tth" --files "$out/data/signal.root" "$out/data/background.root" \
  --out "$out/scores"

# Serve the repository and score the files again through the KServe V2 server.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rootml serve --repo "$out/models" --host 127.0.0.1 --port "$port" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break; sleep 0.5; done
curl -s "http://127.0.0.1:$port/v2/models/tth"; echo
rootml predict --model "http://127.0.0.1:$port/tth" --files "$out/data/signal.root" --out "$out/served_scores.root"
python3 - "$out" <<'PY'
import sys, numpy as np, uproot
out = sys.argv[1]
local = uproot.open(f"{out}/scores/signal_scores.root")["Events"]["score"].array(library="np")
served = uproot.open(f"{out}/served_scores.root")["Events"]["score"].array(library="np")
print(f"served scores equal local onnxruntime: {np.allclose(local, served, atol=1e-6)} ({len(served)} entries)")
PY

echo
echo "Done. Run folder (history, plots/*.png, checkpoint, specs.json, summary.json): $out/run"
echo "Model repository (Triton layout): $out/models    Scores (friend trees): $out/scores/"
echo "Serve it yourself: rootml serve --repo $out/models --port 8000"
