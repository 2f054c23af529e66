#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md, in one run: bash benchmarks/bench_gpu.sh OUT_FOLDER
# Needs a CUDA torch and the offline default models (setup.sh); every script takes the GPU itself (DEVICE=auto).
# Each step goes on when another fails, so one run gives every number it can.
set -uo pipefail
out=${1:?usage: bash benchmarks/bench_gpu.sh OUT_FOLDER}
mkdir -p "$out"
py=${PYTHON:-python3}
export DIARIZATION_MODEL= PYTHONUNBUFFERED=1
step() { echo "== $*"; "$@" || echo "== FAILED ($?): $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the GPU default (fp16) and fp32 against the stock model and the reference words
step env DTYPE=float16 $py -m pytest -q -p no:cacheprovider tests/test_e2e.py
step env DTYPE=float32 $py -m pytest -q -p no:cacheprovider tests/test_e2e.py
step $py -m benchmarks.accuracy --dtypes float32,float16 --out "$out/accuracy.json"
# speculative decoding: the step costs (real and large architectures), then whole requests plain/assisted/auto
step $py -m benchmarks.bench_assisted --pairs models/whisper-base:models/whisper-tiny.en,large-v3:distil-large-v3,medium:tiny --out "$out/bench_assisted.json"
step $py -m benchmarks.benchmark --local --scenarios short,short-assisted,long,long-assisted --iterations 5 --warmup 2 \
    --parameters '{"language": "en"}' --out "$out/bench.json"
step $py -m benchmarks.benchmark --local --scenarios short,short-assisted,long --iterations 5 --warmup 2 \
    --parameters '{"language": "en", "assisted": "auto"}' --out "$out/bench_auto.json"
# what each batch size costs the first time (a fresh server's one-off costs)
step $py -m benchmarks.bench_first_batch --windows 1,1,3,3,2,2,4,4,8,8,5,16,16,24,24 --out "$out/first_batch.json"
# dynamic batching: 8 concurrent 8 s requests against 8 sequential ones, fp16 (the default) and fp32
step $py -m benchmarks.bench_concurrency --repeats 3 --out "$out/concurrency.json"
step env DTYPE=float32 $py -m benchmarks.bench_concurrency --repeats 3 --out "$out/concurrency_fp32.json"
