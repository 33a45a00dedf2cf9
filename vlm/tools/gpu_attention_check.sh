#!/bin/bash
# The GPU check of the attention kernels (SViTT: block-sparse against cuDNN dense), as one command on a lent GPU:
#
#   bash vlm/tools/gpu_attention_check.sh        # writes its JSON and log under $OUT when OUT is set
#
# 1. the attention test files on the GPU (test_fused_paths_take_cudnn_on_gpu runs only there: the fused paths call
#    cuDNN and agree with the float32 explicit kernels);
# 2. `vlm.tools.bench_attention` in bf16 at batch 32: 8 frames (1568 + 1 tokens) and 16 frames (3136 + 1) with both
#    kernels fused (cuDNN), block-sparse explicit against cuDNN dense, both explicit (XLA), and float32;
# 3. a table of the ratios.
# TESTS_K=<pytest -k expression> and BENCHES="f8_fused ..." narrow a rerun.
# A GPU image with jax and flax but not ml_collections (pure Python) gets it from a wheel in .whl, fetched before:
#   pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
set -u
OUT=${OUT:-/tmp/gpu_attention_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used,memory.total --format=csv
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

echo "== tests on the GPU"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 300 python3 -m pytest -q -p no:cacheprovider -rs ${TESTS_K:+-k "$TESTS_K"} \
  tests/test_nn_attention.py tests/test_nn_block_sparse.py 2>&1 | tail -8

echo "== benchmarks"
bench() {  # name, flags...  (BENCHES="name ..." runs only those)
  local name=$1; shift
  [[ -n "${BENCHES:-}" && " $BENCHES " != *" $name "* ]] && return
  timeout 120 python3 -m vlm.tools.bench_attention --json --runs=15 "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" \
    || { echo "$name failed:"; tail -5 "$OUT/$name.err"; }
}
bench f8_fused --dtype=bfloat16 --batch=32 --dense=fused --sparse=fused
bench f8_sparse_explicit --dtype=bfloat16 --batch=32 --dense=fused --sparse=explicit
bench f8_both_explicit --dtype=bfloat16 --batch=32 --dense=explicit --sparse=explicit
bench f16_fused --dtype=bfloat16 --batch=16 --tokens=3136 --dense=fused --sparse=fused
bench f8_float32 --dtype=float32 --batch=32

python3 - "$OUT" <<'PY'
import glob, json, os, sys
print(f"{'run':20s} {'dense ms':>9s} {'kernel':>6s} {'sparse ms':>9s} {'kernel':>6s} {'edges':>6s} {'speedup':>7s} "
      f"{'effic.':>6s}")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
  try:
    r = json.load(open(path))
  except ValueError:
    continue
  k = lambda name: "cuDNN" if r[f"{name}_cudnn"] else "XLA"
  print(f"{os.path.basename(path)[:-5]:20s} {r['dense_seconds'] * 1e3:9.3f} {k('dense'):>6s} "
        f"{r['block_sparse_seconds'] * 1e3:9.3f} {k('block_sparse'):>6s} {r['edge_ratio']:6.2f} "
        f"{r['speedup']:7.2f} {r['efficiency']:6.2f}   {r['dtype']} on {r['device']}")
PY
