#!/usr/bin/env bash
# GPU check for issue 6 (reproducibility and GPU accounting). Needs one NVIDIA GPU; never run by CI.
#
#   tests/gpu/check.sh            # from the repository root; prints a report, exit 0 when all pass
#   PYTHON=/path/to/python tests/gpu/check.sh
#
# 1. Runs the quickstart objective on CUDA twice with reproducibility.deterministic: true (same
#    spec and seed, parallelism 1) and compares every trial's params and value: they must be equal.
# 2. Checks that the GPU model nvidia-smi reports lands in reproducibility.json (gpu_models).
# 3. Compares each trial's charged GPU-seconds (trials.csv, from the ledger) with the time NVML saw
#    the trial's process on the GPU (nvidia-smi --query-compute-apps, polled every 0.1 s; each
#    trial runs in its own worker process, trial.isolation: process). The charge counts the whole
#    process (start-up and imports too), so it must be at least the NVML time and, for these short
#    trials, within a few seconds of it: the script prints both and fails only if the charge is
#    below the NVML time minus one polling interval and rounding.
#
# Touches nothing on the GPU's settings (no accounting mode, no clocks); writes only under a
# temporary directory, which it prints.
set -euo pipefail

REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
WORK="$(mktemp -d -t tunefleet-gpu-check-XXXXXX)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TUNEFLEET_LOG_FORMAT=json
echo "gpu check: repo $REPO, python $PYTHON, work dir $WORK"

command -v nvidia-smi >/dev/null || { echo "FAIL: nvidia-smi not found: this script needs an NVIDIA GPU"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" - <<'EOF' || { echo "FAIL: torch with CUDA is not available to $PYTHON"; exit 2; }
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}")
EOF

write_spec() {  # $1: study name
  cat >"$WORK/$1.yaml" <<EOF
apiVersion: tunefleet.dev/v1alpha1
kind: Study
metadata: {name: $1}
spec:
  objective:
    metrics: [{name: val_accuracy, direction: maximize}]
  searchSpace:
    lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    batch_size: {type: categorical, choices: [32, 64, 128]}
    optimizer: {type: categorical, choices: [adam, sgd]}
    momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
    n_layers: {type: int, low: 1, high: 3}
    hidden: {type: int, low: 32, high: 256, log: true}
  strategy: {sampler: random, pruner: none, seed: 42}
  budget: {maxTrials: 3, gpuHours: 1}
  parallelism: 1
  reproducibility: {deterministic: true}
  trial:
    python: examples.quickstart.train:objective
    gpus: 1
    isolation: process
    maxDuration: 5m
EOF
}

# Poll NVML (through nvidia-smi) for compute processes while the first run goes on.
poll_nvml() {
  while true; do
    nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | sed "s/^/$(date +%s.%N) /"
    sleep 0.1
  done
}

for name in det-a det-b; do
  write_spec "$name"
  if [[ "$name" == det-a ]]; then poll_nvml >"$WORK/nvml.log" & POLLER=$!; fi
  (cd "$WORK" && "$PYTHON" -m controller.cli run "$WORK/$name.yaml" --storage "sqlite:///$WORK/$name.db" \
      --out "$WORK/out-$name" --workdir "$REPO" -q) | grep -v '^{' || { echo "FAIL: run $name failed"; exit 1; }
  if [[ "$name" == det-a ]]; then kill "$POLLER"; wait "$POLLER" 2>/dev/null || true; fi
done

"$PYTHON" - "$WORK" <<'EOF'
import csv, json, subprocess, sys
from collections import defaultdict
from pathlib import Path

work = Path(sys.argv[1])
failures = []

def rows(name):
    with (work / f"out-{name}" / "trials.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))

a, b = rows("det-a"), rows("det-b")
params = lambda r: {k: v for k, v in r.items() if k.startswith("param_")}
print("\n1. determinism: quickstart on CUDA, deterministic: true, run twice")
for ra, rb in zip(a, b):
    same = params(ra) == params(rb) and ra["val_accuracy"] == rb["val_accuracy"] and ra["state"] == rb["state"]
    print(f"   trial {ra['number']}: {ra['state']} {ra['val_accuracy']} vs {rb['state']} {rb['val_accuracy']}"
          f"  {'same' if same else 'DIFFERENT'}")
    if not same:
        failures.append(f"trial {ra['number']} differs between the two runs")
if len(a) != 3 or len(b) != 3 or any(r["state"] != "COMPLETE" for r in a + b):
    failures.append(f"expected 3 COMPLETE trials per run: {[r['state'] + ' ' + r['reason'] for r in a + b]}")

print("\n2. GPU model in reproducibility.json")
record = json.loads((work / "out-det-a" / "reproducibility.json").read_text())
smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
names = {line.strip() for line in smi.stdout.splitlines() if line.strip()}
print(f"   nvidia-smi: {sorted(names)}; reproducibility.json gpu_models: {record['gpu_models']}")
print(f"   per-trial gpu_model: {[t.get('gpu_model') for t in record['trials']]}")
if not names & set(record["gpu_models"]):
    failures.append("the GPU model is missing from reproducibility.json")

print("\n3. charged GPU-seconds vs. the time NVML saw each trial's process")
seen = defaultdict(list)
for line in (work / "nvml.log").read_text().splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[1].isdigit():
        seen[int(parts[1])].append(float(parts[0]))
spans = sorted((min(t), max(t), pid) for pid, t in seen.items())
print(f"   processes NVML saw: {[(pid, round(end - start, 1)) for start, end, pid in spans]}")
if len(spans) != len(a):
    failures.append(f"NVML saw {len(spans)} processes for {len(a)} trials (isolation: process should give one each)")
for row, (start, end, pid) in zip(a, spans):
    nvml_s = end - start
    charged = int(row["gpu_seconds"])
    print(f"   trial {row['number']}: charged {charged} GPU-s, wall {row['duration_s']} s, "
          f"NVML saw pid {pid} for {nvml_s:.1f} s (charge - NVML = {charged - nvml_s:+.1f} s)")
    if charged + 1.2 < nvml_s:
        failures.append(f"trial {row['number']}: charged {charged} GPU-s < {nvml_s:.1f} s on the GPU")

print()
if failures:
    print("FAIL:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("PASS: deterministic reruns equal, GPU model recorded, GPU-seconds cover NVML time")
EOF
