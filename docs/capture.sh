#!/bin/sh
# Regenerates docs/convert-transformer.txt (a tmux capture of `quantcli convert` on the sample
# transformer, as a terminal shows it) and docs/transformer-report.html (its HTML report).
# Run from the repository root after `make install`; needs tmux.
set -eu
repo=$(pwd)
out=$(mktemp -d)
ln -s "$repo/sample_models" "$out/sample_models"
S=sample_models/digits_transformer
args="convert $S/model.onnx -o model.int8.onnx --data $S/calib.npz --eval-data $S/eval.npz --labels $S/eval_labels.npy --report-html report.html"
tmux kill-session -t quantcli-docs 2>/dev/null || true
tmux new-session -d -s quantcli-docs -x 120 -y 80 -c "$out" \
  "sh -c 'echo \"\$ quantcli $args\"; $repo/.venv/bin/quantcli $args; echo exit code \$?; touch done; sleep 600'"
while [ ! -e "$out/done" ]; do sleep 1; done
tmux capture-pane -p -J -t quantcli-docs -S - | sed -e 's/[[:space:]]*$//' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' \
  > docs/convert-transformer.txt
tmux kill-session -t quantcli-docs
cp "$out/report.html" docs/transformer-report.html
rm -rf "$out"
# The screenshot of that report (headless Chromium: apt-get install chromium).
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$(mktemp -d)" --screenshot=docs/transformer-report.png \
  --window-size=1100,1000 --hide-scrollbars "file://$repo/docs/transformer-report.html"
