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
rootml inspect "$out/data/signal.root" | head -12
rootml train --files "$out/data/files.txt" --labels "$out/data/labels.txt" \
  --model examples/tth/model.py --params examples/tth/params.json --out "$out/run"
rootml export "$out/run" --name tth --repo "$out/models"
rootml predict --model "$out/models/tth" --files "$out/data/signal.root" "$out/data/background.root" \
  --out "$out/scores"
echo
echo "Done. Run folder (history, plots/*.png, checkpoint, specs.json, summary.json): $out/run"
echo "Model repository (Triton layout): $out/models    Scores (friend trees): $out/scores/"
echo "Serve it: rootml serve --repo $out/models --port 8000"
