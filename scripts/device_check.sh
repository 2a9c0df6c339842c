#!/bin/sh
# One prepared check of the GPU path: `cseg bench train --synthetic` for the real recipes'
# models at their real resolution, a bf16 / channels_last / fused / cudnn / compile
# comparison, and the loss benchmarks. One table at the end; with $OUT set, the results
# also go to $OUT/device_check.json and $OUT/device_check.txt (rewritten after each run,
# so a cut-off check still returns what it measured).
#
# On a GPU machine (no package registry; its own PyTorch): run scripts/device_wheels.sh
# here first, carry .device_wheels with the tree, then `sh scripts/device_check.sh` there.
# It makes a venv on top of the machine's Python and installs the project with --no-deps.
# Without a GPU it uses this checkout's .venv, times the debug recipes only (under 3
# minutes) and says what it skipped.
set -eu
cd "$(dirname "$0")/.."
RESULTS=$(mktemp -d)
REPORT_DIR=${OUT:-$RESULTS}

if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    GPU=1
    [ -d .device_wheels ] || { echo "no .device_wheels/: run scripts/device_wheels.sh where pip works, and carry the folder" >&2; exit 2; }
    VENV=/tmp/cseg-device-venv
    python3 -m venv --without-pip --system-site-packages "$VENV"
    # The machine's python3 may itself be a venv: its packages (torch, pip, setuptools)
    # join through a .pth.
    python3 -c 'import site; print("\n".join(site.getsitepackages()))' \
        > "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/machine.pth"
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps .device_wheels/*.whl
    # This checkout itself; where the machine's setuptools cannot build it, the wheel
    # scripts/device_wheels.sh built from it.
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . \
        || { echo "installing the checkout failed: using .device_wheels/project" >&2;
             "$VENV/bin/python" -m pip install --quiet --no-index --no-deps .device_wheels/project/*.whl; }
    CSEG="$VENV/bin/cseg"
    STEPS=${DEVICE_CHECK_STEPS:-10}
    WARMUP=${DEVICE_CHECK_WARMUP:-3}
else
    GPU=0
    [ -x .venv/bin/cseg ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 2; }
    CSEG=.venv/bin/cseg
    STEPS=${DEVICE_CHECK_STEPS:-5}
    WARMUP=${DEVICE_CHECK_WARMUP:-2}
fi
PYTHON=$(dirname "$CSEG")/python

summarize() {
    "$PYTHON" - "$RESULTS" "$REPORT_DIR" <<'PY'
import json, sys
from pathlib import Path

results, report = Path(sys.argv[1]), Path(sys.argv[2])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
columns = ["step_s", "data_wait_s", "forward_s", "backward_s", "optimizer_s", "samples_per_s",
           "tflops", "mfu", "peak_device_mib", "host_syncs_per_step", "overhead_ratio", "time_s"]
def cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
lines = ["run".ljust(34) + " ".join(c[:11].rjust(11) for c in columns)]
for name, run in runs.items():
    lines.append(name[:34].ljust(34) + " ".join(cell(run.get(c)).rjust(11) for c in columns))
devices = sorted({run["device"] for run in runs.values() if "device" in run})
table = "\n".join([f"device: {', '.join(devices) or 'n/a'}", *lines])
report.mkdir(parents=True, exist_ok=True)
(report / "device_check.json").write_text(json.dumps(runs, indent=1))
(report / "device_check.txt").write_text(table + "\n")
print(table)
PY
}

bench() {  # bench NAME RECIPE [key=value ...]
    name=$1; recipe=$2; shift 2
    echo "== $name" >&2
    "$CSEG" bench train "$recipe" --synthetic --steps "$STEPS" --warmup "$WARMUP" \
        --json "$RESULTS/$name.json" "$@" >/dev/null || echo "   $name failed" >&2
}

loss() {  # loss CASE
    echo "== loss $1" >&2
    "$CSEG" bench loss "$1" --threads 8 --repeats 2 --json "$RESULTS/loss-$1.json" >/dev/null \
        || echo "   loss $1 failed" >&2
}

if [ "$GPU" = 0 ]; then
    bench debug-cacl cacl/debug
    bench debug-maskcontrast maskcontrast/debug
    bench debug-reco reco/voc_60labels_debug
    summarize
    echo "no GPU here: timed the debug recipes only; skipped the real models at real resolution," \
        "the bf16/channels_last/fused/cudnn/compile comparison and the loss benchmarks" >&2
    exit 0
fi

# The real recipes' models at real resolution, batch as shipped (per GPU).
bench cacl-r50 cacl/kinetics400
summarize
bench maskcontrast-r50-os8 maskcontrast/voc
bench reco-r101-v3plus reco/voc_60labels
summarize
# The same at batch 2 per stream (as the CPU figures of docs/benchmarks.md).
bench cacl-r50-b2 cacl/kinetics400 stages.cacl.data.batch_size=2
bench maskcontrast-r50-os8-b2 maskcontrast/voc stages.maskcontrast.data.batch_size=2
bench reco-r101-v3plus-b2 reco/voc_60labels stages.reco.data.batch_size=2
summarize
# Each fast path against the default (bf16 + channels_last, fused optimizer), on CACL R50.
bench cacl-r50-fp32 cacl/kinetics400 scaling.mixed_precision=false
bench cacl-r50-foreach cacl/kinetics400 scaling.fused_optimizer=false
bench cacl-r50-cudnn-benchmark cacl/kinetics400 scaling.cudnn_benchmark=true
summarize
bench cacl-r50-compile cacl/kinetics400 scaling.compile=true
summarize
loss cacl
loss maskcontrast
loss reco
summarize
