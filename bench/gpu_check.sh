#!/usr/bin/env bash
# The GPU path of curate, end to end, in at most 5 minutes on one H100 (16 cores):
#
#   1. embedding on CUDA: `curate embed` (ViT-B-32, random weights: a throughput check) of a
#      small pool made by `curate demo-pool`;
#   2. 50 training steps of the `small` scale (ViT-B-32, 224 px, batch 4096, amp_bf16) with
#      `curate score`, through a scales file whose `small` is the shipped one with
#      samples_seen = 50 x batch (warmup scaled with it);
#   3. faiss-gpu: k-means (1,024 clusters, 20 iterations) and near_dedup's IVF search on
#      1M x 512 planted near-duplicates, each on the GPU and on the CPU, compared.
#
# Each step writes its figures (throughput, seconds, agreement with the CPU) to a JSON file
# under $OUT (default ./gpu_check_out). Nothing is downloaded: the machine has no network.
# faiss-gpu-cu12 (and the CUDA 12 libraries it needs) are installed only from wheels in a
# `.whl/` folder at the repository root, if there is one, into a private directory.
#
# It stops at the first error, loudly, with the step that failed; every step runs under
# `timeout`, and the whole script under a budget (GPU_CHECK_BUDGET_S, default 290 s).
#
#   bash bench/gpu_check.sh
#   OUT=/tmp/gc GPU_CHECK_DEVICE=cpu GPU_CHECK_ROWS=50000 GPU_CHECK_POOL_SIZE=512 \
#       GPU_CHECK_EMBED_MODEL=curate-tiny-vit-p4 bash bench/gpu_check.sh
#       # no GPU: the same steps on the CPU, smaller (checks the script, not the GPU)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
ROWS="${GPU_CHECK_ROWS:-1000000}"
POOL_SIZE="${GPU_CHECK_POOL_SIZE:-2048}"
EMBED_MODEL="${GPU_CHECK_EMBED_MODEL:-ViT-B-32}"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-290}))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export NO_ALBUMENTATIONS_UPDATE=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export OUT WORK DEVICE ROWS

fail() {
    echo "GPU CHECK FAILED: $*" >&2
    exit 1
}

# step NAME SECONDS COMMAND...: run under a timeout (at most what the budget has left)
step() {
    local name=$1 budget=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    ((left > 5)) || fail "no time left for step '$name' (budget spent)"
    local limit=$((budget < left ? budget : left))
    echo "== $name (at most ${limit}s)"
    local started=$SECONDS status=0
    timeout --kill-after=5 "$limit" "$@" || status=$?
    ((status == 0)) || fail "step '$name' exited with $status (124 would mean: past its ${limit}s)"
    echo "== $name: ok in $((SECONDS - started))s"
}

if compgen -G ".whl/*.whl" >/dev/null; then
    step "install faiss-gpu from .whl/" 60 \
        python -m pip install --quiet --no-index --no-deps --target "$WORK/site" .whl/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi

step environment 30 python - <<'PY'
import json, os, sys
import faiss, torch
from curate.dedup.device import faiss_gpus
info = {
    "device": os.environ["DEVICE"],
    "torch": torch.__version__,
    "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "faiss": faiss.__version__,
    "faiss_gpus": faiss_gpus(faiss),
    "cores": len(os.sched_getaffinity(0)),
}
json.dump(info, open(os.path.join(os.environ["OUT"], "environment.json"), "w"), indent=2)
print(json.dumps(info))
if os.environ["DEVICE"] == "cuda":
    if not info["cuda_available"]:
        sys.exit("torch sees no CUDA device")
    if info["faiss_gpus"] == 0:
        sys.exit("this faiss has no GPU support: put faiss-gpu-cu12 wheels (and its nvidia-*-cu12 "
                 "dependencies) in .whl/ and rerun")
PY

# -- 1. embedding on CUDA -------------------------------------------------------------------
step demo-pool 60 curate demo-pool --out "$WORK/pool" --size "$POOL_SIZE" --holdout-size 256
export EMBED_MODEL
step "random weights" 60 python - <<'PY'
import os
import open_clip, torch
from curate.models.configs import register_curate_models
register_curate_models()
model = open_clip.create_model(os.environ["EMBED_MODEL"])  # no download: random initialisation
torch.save(model.state_dict(), os.path.join(os.environ["WORK"], "random-weights.pt"))
PY
started=$(date +%s.%N)
step embed 90 curate embed "$WORK/pool" --model "$EMBED_MODEL" \
    --pretrained "$WORK/random-weights.pt" --device "$DEVICE" --batch-size 512 --name gpu-check \
    2>&1 | tee "$OUT/embed.log"
export EMBED_SECONDS
EMBED_SECONDS=$(python -c "print($(date +%s.%N) - $started)")
python - <<'PY'
import json, os
import numpy as np
image = np.load(os.path.join(os.environ["WORK"], "pool/embeddings/gpu-check/image.npy"), mmap_mode="r")
seconds = float(os.environ["EMBED_SECONDS"])
model = os.environ["EMBED_MODEL"]
import re
said = re.search(r"in ([0-9.]+)s \(([0-9.]+) images/s\)", open(os.path.join(os.environ["OUT"], "embed.log")).read())
figures = {"command": f"curate embed --model {model} (random weights) --batch-size 512",
           "device": os.environ["DEVICE"], "images": image.shape[0], "dim": image.shape[1],
           "seconds_whole_command": seconds, "images_per_second_whole_command": image.shape[0] / seconds,
           "seconds_embedding": float(said.group(1)), "images_per_second": float(said.group(2))}
json.dump(figures, open(os.path.join(os.environ["OUT"], "embed.json"), "w"), indent=2)
print(json.dumps(figures))
PY

# -- 2. 50 steps of the small scale, amp_bf16 -------------------------------------------------
python - <<'PY'
import os
import yaml
from curate.training.scales import load_scales
small = load_scales()["small"]
steps = 50
if os.environ["DEVICE"] != "cuda":  # the CPU rehearsal: a tiny model, fp32 (bf16 on CPU crawls)
    tiny = {"arch": "curate-tiny-vit-p4", "image_size": 32, "batch_size": 4, "workers": 0,
            "precision": "fp32", "image_cache_gib": 1.0}
    small = small.model_copy(update=tiny)
override = small.with_samples_seen(steps * small.batch_size)
assert override.steps == steps
assert override.precision == "amp_bf16" or os.environ["DEVICE"] != "cuda"
yaml.safe_dump({"small": override.model_dump()}, open(os.path.join(os.environ["WORK"], "scales.yaml"), "w"))
PY
step train-small 150 curate score "$WORK/pool" --scale small --scales-file "$WORK/scales.yaml" \
    --tasks pool-holdout
python - <<'PY'
import glob, json, os
import yaml
(run,) = glob.glob(os.path.join(os.environ["WORK"], "pool/results/*/run.json"))
train = json.load(open(run))["train"]
scale = yaml.safe_load(open(os.path.join(os.environ["WORK"], "scales.yaml")))["small"]
figures = {"scale": "small, samples_seen = 50 x batch", "device": os.environ["DEVICE"],
           **{key: scale[key] for key in ("arch", "image_size", "batch_size", "precision")}, **train}
figures.pop("losses", None)
json.dump(figures, open(os.path.join(os.environ["OUT"], "train_small.json"), "w"), indent=2)
print(json.dumps(figures))
PY

# -- 3. faiss-gpu: k-means and IVF near-dedup, GPU against CPU ------------------------------
# a file, not stdin: the CPU run's worker processes re-import the main module
cat >"$WORK/faiss_check.py" <<'PY'
import json, os, time
from pathlib import Path
import numpy as np
from curate.dedup.blocks import NpyFile, Survivors
from curate.dedup.clustering import assign, kmeans
from curate.dedup.device import faiss_gpu
from curate.core.executor import LocalExecutor
from curate.dedup.ivf import GROUP_ROWS, ivf_lists, ivf_pairs
from curate.dedup.knn import configure_threads, plan_index
from curate.dedup.synthetic import planted_near_duplicates_file


def main():

    work, rows, dim = Path(os.environ["WORK"]), int(os.environ["ROWS"]), 512
    gpu = faiss_gpu(os.environ["DEVICE"])
    if os.environ["DEVICE"] == "cuda":
        assert gpu, "faiss cannot use the GPU"
    configure_threads()
    path = work / "planted.npy"
    planted_near_duplicates_file(path, rows, dim, n_centers=10_000, duplicate_fraction=0.1)
    np.save(work / "rows.npy", np.arange(rows))
    survivors = Survivors(NpyFile.open(path), np.arange(rows))
    figures = {"rows": rows, "dim": dim, "faiss_gpu": gpu}

    def timed(fn):
        started = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - started

    k, sample = 1024, min(rows, 262_144)
    on_gpu, gpu_s = timed(lambda: kmeans(survivors, k, seed=0, train_sample=sample, gpu=gpu))
    on_cpu, cpu_s = timed(lambda: kmeans(survivors, k, seed=0, train_sample=sample))
    check = survivors.block(0, min(rows, 100_000))
    def objective(centroids):
        return float(assign(check, centroids)[1].mean())
    figures["kmeans"] = {
        "clusters": k, "train_rows": sample, "iterations": 20,
        "gpu_seconds": gpu_s, "cpu_seconds": cpu_s, "speedup": cpu_s / gpu_s,
        "mean_similarity_to_centroid_gpu": objective(on_gpu),
        "mean_similarity_to_centroid_cpu": objective(on_cpu),
    }
    plan = plan_index(rows, "ivf")
    cores = len(os.sched_getaffinity(0))
    def near(use_gpu, name, executor=None, group_rows=GROUP_ROWS):
        lists = ivf_lists(survivors, plan, work / name, seed=0, executor=executor,
                          gpu=use_gpu, gpus=1 if use_gpu else 0)
        return ivf_pairs(survivors, work / "rows.npy", 0.95, lists, work / name,
                         executor=executor, group_rows=group_rows,
                         torch_device="cuda" if use_gpu else None)
    gpu_pairs, gpu_s = timed(lambda: near(gpu, "near-gpu"))
    with LocalExecutor(cores) as executor:  # the CPU's best: a task per core, one group each
        cpu_pairs, cpu_s = timed(lambda: near(False, "near-cpu", executor, -(-rows // cores)))
    key = lambda p: set(zip(p.left.tolist(), p.right.tolist()))
    g, c = key(gpu_pairs), key(cpu_pairs)
    figures["near_dedup_ivf"] = {
        "nlist": plan.nlist, "nprobe": plan.nprobe, "threshold": 0.95,
        "gpu_seconds": gpu_s, "cpu_seconds": cpu_s, "cpu_processes": cores, "speedup": cpu_s / gpu_s,
        "rows_per_second_gpu": rows / gpu_s, "pairs_gpu": len(g), "pairs_cpu": len(c),
        "pairs_in_both": len(g & c), "agreement": len(g & c) / max(1, len(g | c)),
    }
    json.dump(figures, open(os.path.join(os.environ["OUT"], "faiss.json"), "w"), indent=2)
    print(json.dumps(figures))
    assert figures["near_dedup_ivf"]["agreement"] >= 0.99, "GPU and CPU near-duplicate pairs differ"
    km = figures["kmeans"]
    assert abs(km["mean_similarity_to_centroid_gpu"] - km["mean_similarity_to_centroid_cpu"]) < 0.01


if __name__ == "__main__":  # the CPU run spawns worker processes
    main()
PY
step faiss 150 python "$WORK/faiss_check.py"

echo "GPU CHECK PASSED in $((SECONDS))s; figures in $OUT:"
ls "$OUT"
