#!/usr/bin/env bash
# GPU smoke run: every stage of config/sd15_random.yaml (SD1.5's architecture with random weights, built by the
# rule random_model; fp16 on CUDA) on one GPU, then per job its wall time, the host's peak memory (Snakemake's
# benchmark files, where the rule writes one) and the GPU's peak memory while it ran (nvidia-smi sampled every
# 200 ms; jobs run one at a time, so each window is one job's).
#
#   benchmarks/gpu_smoke.sh            # the run and the table (logs under logs/gpu_smoke/<name>/)
#   benchmarks/gpu_smoke.sh -n         # the dry run: the jobs it would run
#   TARGETS="..." benchmarks/gpu_smoke.sh   # other targets of the same config
#   CONFIG=config/sd2_random.yaml benchmarks/gpu_smoke.sh   # SD2's architecture (v-prediction) at 768 px
# (results/<name> of config/<name>.yaml; tests/test_sd_end_to_end.py runs both configs' every stage at 64 px on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-config/sd15_random.yaml}
NAME=$(basename "$CONFIG" .yaml)  # its model.name
TARGETS=${TARGETS:-"results/iou.nc results/$NAME/eval.nc results/$NAME/recovery.nc results/$NAME/attack/table.csv results/$NAME/detection.nc"}
LOGS=logs/gpu_smoke/$NAME
export HF_HUB_OFFLINE=1  # nothing is downloaded: the model and its stand-in images are built by rules

if [[ "${1:-}" == "-n" ]]; then
  exec python -m snakemake -n $TARGETS --configfile "$CONFIG"
fi

mkdir -p "$LOGS"
rm -f "$LOGS/gpu_memory.csv"
sampler=""
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > "$LOGS/gpu_memory.csv" &
  sampler=$!
  trap 'kill "$sampler" 2> /dev/null || true' EXIT
fi
start=$(date +%s)
status=0
python -m snakemake --jobs 1 --cores 16 $TARGETS --configfile "$CONFIG" > "$LOGS/snakemake.log" 2>&1 || status=$?
echo "snakemake exit status $status after $(( $(date +%s) - start )) s (log: $LOGS/snakemake.log)"
[[ -n "$sampler" ]] && kill "$sampler" 2> /dev/null || true

python - "$LOGS/snakemake.log" "$LOGS/gpu_memory.csv" <<'EOF'
"""Per job of the Snakemake log: rule, wildcards, seconds (benchmark file, else the log's start/finish stamps),
host peak RSS (benchmark), GPU peak memory.used during the job (nvidia-smi samples)."""
import csv
import re
import sys
from datetime import datetime
from pathlib import Path

log, gpu = Path(sys.argv[1]), Path(sys.argv[2])
jobs, stamp, current = {}, None, None
for line in log.read_text().splitlines():
    s = line.strip()
    if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", s):
        stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
    elif m := re.fullmatch(r"(?:local)?(?:rule|checkpoint) (\w+):", s):
        current = {"rule": m.group(1), "start": stamp, "end": None, "wildcards": "", "benchmark": None}
    elif current is not None and (m := re.fullmatch(r"jobid: (\d+)", s)):
        jobs[m.group(1)] = current
    elif current is not None and s.startswith(("wildcards:", "benchmark:")):
        key, value = s.split(":", 1)
        current[key] = value.strip()
    elif m := re.match(r"Finished jobid: (\d+)", s):
        if m.group(1) in jobs:
            jobs[m.group(1)]["end"] = stamp
samples = []
if gpu.is_file():
    for row in csv.reader(gpu.open()):
        try:
            samples.append((datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f"), float(row[1])))
        except (ValueError, IndexError):
            pass
print(f"{'rule':<22} {'wildcards':<48} {'seconds':>8} {'host MiB':>9} {'GPU MiB':>8}")
total = 0.0
for job in sorted(jobs.values(), key=lambda j: j["start"] or datetime.min):
    seconds, rss = None, None
    if job["benchmark"] and Path(job["benchmark"]).is_file():
        rows = list(csv.DictReader(Path(job["benchmark"]).open(), delimiter="\t"))
        if rows:
            seconds, rss = float(rows[-1]["s"]), rows[-1].get("max_rss", "-")
    if seconds is None and job["start"] and job["end"]:
        seconds = (job["end"] - job["start"]).total_seconds()
    window = [mib for t, mib in samples if job["start"] and job["end"] and job["start"] <= t.replace(microsecond=0) <= job["end"]]
    total += seconds or 0.0
    print(f"{job['rule']:<22} {job['wildcards'][:48]:<48} {seconds if seconds is not None else float('nan'):>8.1f} "
          f"{rss or '-':>9} {max(window) if window else '-':>8}" + ("" if job["end"] else "  (not finished)"))
print(f"{len(jobs)} jobs, {total:.0f} s in jobs" + ("" if samples else "; no nvidia-smi samples (no GPU here)"))
EOF
exit "$status"
