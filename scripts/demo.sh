#!/usr/bin/env bash
# The main job end to end on an embedded default: generate small NanoAOD-like ttH(bb) signal and
# background files, train the seed's MLP on them, export it to a model repository, score the
# files with it, then serve the repository and score them again through the server. No network
# once installed. rootml, with every extra ([all]: train, export, serve, client, parquet), goes
# into the project's virtual environment (.venv/, or the active one; scripts/setup_env.sh). Usage: bash scripts/demo.sh [OUT_DIR] (default: out/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
out="${1:-out/demo}"

command -v curl >/dev/null 2>&1 || apt_install curl
use_project_venv
install_rootml ".[all]"
installed=$SECONDS

"$PY" examples/tth/make_data.py "$out/data" --events 20000
rootml inspect "$out/data/signal.root" >"$out/inspect.txt" && head -8 "$out/inspect.txt"
rootml train --files "$out/data/files.txt" --labels "$out/data/labels.txt" \
  --model examples/tth/model.py --params examples/tth/params.json --out "$out/run" --overwrite
rootml export "$out/run" --name tth --repo "$out/models"
rootml predict --model "$out/models/tth" --files "$out/data/signal.root" "$out/data/background.root" \
  --out "$out/scores"

# Serve the repository and score the files again through the KServe V2 server.
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rootml serve --repo "$out/models" --host 127.0.0.1 --port "$port" >"$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break; sleep 0.5; done
curl -s "http://127.0.0.1:$port/v2/models/tth"
echo
rootml predict --model "http://127.0.0.1:$port/tth" --files "$out/data/signal.root" --out "$out/served_scores.root"
"$PY" - "$out" <<'PY'
import sys, numpy as np, uproot
out = sys.argv[1]
local = uproot.open(f"{out}/scores/signal_scores.root")["Events"]["score"].array(library="np")
served = uproot.open(f"{out}/served_scores.root")["Events"]["score"].array(library="np")
same = len(local) == len(served) and np.allclose(local, served, atol=1e-6)
print(f"served scores equal local onnxruntime: {same} ({len(served)} entries)")
sys.exit(not same)
PY

echo
echo "Done in $SECONDS s ($installed s of them installing)."
echo "Run folder (history, plots/*.png, checkpoint, specs.json, summary.json): $out/run"
echo "Model repository (Triton layout): $out/models    Scores (friend trees): $out/scores/"
echo "rootml is installed in $VIRTUAL_ENV: 'source $VIRTUAL_ENV/bin/activate' puts it on PATH."
echo "Serve it yourself: rootml serve --repo $out/models --port 8000"
