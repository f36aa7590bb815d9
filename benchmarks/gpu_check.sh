#!/usr/bin/env bash
# One-shot GPU run, in under 9 minutes on one H100/H200-class GPU:
#  1. benchmarks/train_step.py: T5 1.1 base, bf16, batch 32 x 512/114, t5jax against Hugging
#     Face PyTorch (attention_impl auto = cuDNN's fused attention), and large (t5jax only);
#  2. benchmarks/decode.py: T5 1.1 base, bf16, greedy and beam 4, t5jax against HF generate();
#  3. XLA's GPU target description (gpu_target_config.pbtxt, from an --xla_dump_to of a small
#     jit): what `t5jax compile --gpu` needs to compile for this GPU on a machine without one.
#
#   bash benchmarks/gpu_check.sh            # from the repository root or anywhere
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#   DRY_RUN=1 bash benchmarks/gpu_check.sh  # on CPU: the same runs on t5_1_1_tiny, tiny batch
#
# Results (JSON lines, one log, nvidia-smi) go to $OUT if set, else benchmarks/results/gpu/.
# On a GPU host whose python has no GPU jax, it pip-installs jax[cuda12] at the version
# pyproject.toml pins; a GPU jax of another version is used as it is, with a warning. On an
# offline host, carry missing wheels in .whl/ (gin-config at least; docs/performance/gpu.md).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/gpu}"
PYTHON="${PYTHON:-python3}"
# The lower bound of pyproject's jax pin ("jax>=0.10.2,<0.11"): the version we test.
JAX_VERSION="${JAX_VERSION:-$(sed -n 's/.*"jax>=\([0-9.]*\),.*/\1/p' pyproject.toml)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS

if [ -n "${DRY_RUN:-}" ]; then
  # No GPU, no installs: check that every step of the script runs (two tiny compiles).
  mkdir -p "$OUT_DIR"
  for impl in auto einsum; do
    "$PYTHON" benchmarks/train_step.py --model t5_1_1_tiny --dtype bfloat16 --batch 2 \
      --inputs_length 32 --targets_length 8 --steps 1 --rounds 1 --warmup 1 --peak_size 256 \
      --attention_impl "$impl" --json_out "$OUT_DIR/gpu_results.jsonl"
  done
  "$PYTHON" benchmarks/decode.py --model t5_1_1_tiny --layers 0 --dtype bfloat16 --batch 2 \
    --inputs_length 32 --decode_length 8 --repeats 1 --json_out "$OUT_DIR/decode_results.jsonl"
  echo "gpu_check.sh dry run done in $((SECONDS - START)) s; results in $OUT_DIR"
  exit 0
fi
if ! command -v nvidia-smi >/dev/null; then
  echo "gpu_check.sh: no nvidia-smi on this machine; it is for a GPU host." >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
nvidia-smi | tee "$OUT_DIR/nvidia-smi.txt"

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

jax_gpu() {
  "$PYTHON" -c "import jax; assert jax.devices()[0].platform == 'gpu'; print(jax.__version__)" \
    2>/dev/null
}
have="$(jax_gpu || true)"
if [ -z "$have" ]; then
  echo "python's jax sees no GPU; installing jax[cuda12]==$JAX_VERSION"
  "$PYTHON" -m pip install -q --retries 1 --timeout 10 "jax[cuda12]==$JAX_VERSION" || {
    echo "gpu_check.sh: pip could not install jax[cuda12]==$JAX_VERSION and no GPU jax" \
         "is installed; carry the wheels in .whl/ (docs/performance/gpu.md)." >&2
    exit 3
  }
elif [ "$have" != "$JAX_VERSION" ]; then
  echo "WARNING: the GPU jax here is $have, not the pinned $JAX_VERSION; measured with $have." \
    | tee "$OUT_DIR/WARNING.txt"
fi
missing="$("$PYTHON" -c "
import importlib.util as u
print(' '.join(m for m in ('gin', 'flax', 'optax', 'torch', 'transformers') if not u.find_spec(m)))")"
if [ -n "$missing" ]; then
  echo "installing missing modules: $missing"
  "$PYTHON" -m pip install -q --retries 1 --timeout 10 $(echo "$missing" | sed 's/\bgin\b/gin-config/') || {
    echo "gpu_check.sh: missing $missing and pip cannot install them; carry wheels in .whl/." >&2
    exit 3
  }
fi
"$PYTHON" - <<'EOF' | tee "$OUT_DIR/env.txt"
import flax, jax, optax, torch, transformers
print(f"jax {jax.__version__} {jax.devices()}; flax {flax.__version__}; optax {optax.__version__}")
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()}; transformers {transformers.__version__}")
EOF
echo "set-up took $((SECONDS - START)) s"

LOG="$OUT_DIR/gpu_check.log"
# The target description first: seconds, and useful even if a benchmark below fails.
dump=$(mktemp -d)
XLA_FLAGS="--xla_dump_to=$dump" "$PYTHON" -c "
import jax, jax.numpy as jnp
x = jnp.ones((256, 256), jnp.bfloat16)
jax.jit(lambda a: (a @ a).sum())(x).block_until_ready()" >>"$LOG" 2>&1 || true
found=$(find "$dump" -name '*gpu_target_config*' | head -1)
if [ -n "$found" ]; then cp "$found" "$OUT_DIR/gpu_target_config.pbtxt"
else echo "no gpu_target_config in the XLA dump: $(ls "$dump" | head -5)" | tee -a "$LOG"; fi

# Each run under a timeout that keeps the whole script under 9 minutes even if a compile is
# slow; a run cut off loses only its own line. Measured on an H200 (jax 0.11.2, 2026-12-04):
# T5 1.1 base at batch 32 took 158 s end to end for t5jax alone (the parameter init's
# compile over 60 s, the step's 38 s), so the first budget of 150 s with HF beside it cut
# every run short; base now runs with HF first, large without it.
run() {
  local model=$1 batch=$2 limit=$3 impl=$4 skip_hf=${5:-}
  echo "== $model bf16 batch $batch x 512/114, attention $impl (limit ${limit} s)" | tee -a "$LOG"
  timeout "$limit" "$PYTHON" benchmarks/train_step.py --model "$model" --dtype bfloat16 \
    --batch "$batch" --inputs_length 512 --targets_length 114 --steps 5 --rounds 3 \
    --attention_impl "$impl" $skip_hf --json_out "$OUT_DIR/gpu_results.jsonl" 2>&1 \
    | tee -a "$LOG" \
    || echo "$model: exit status $? (124 = timed out)" | tee -a "$LOG"
}
run t5_1_1_base 32 270 auto
echo "== decoding t5_1_1_base bf16, batch 32, inputs 512, 64 new tokens (limit 100 s)" | tee -a "$LOG"
timeout 100 "$PYTHON" benchmarks/decode.py --model t5_1_1_base --layers 0 --dtype bfloat16 \
  --batch 32 --inputs_length 512 --decode_length 64 --num_beams 4 --repeats 3 \
  --json_out "$OUT_DIR/decode_results.jsonl" 2>&1 | tee -a "$LOG" \
  || echo "decode: exit status $? (124 = timed out)" | tee -a "$LOG"
run t5_1_1_large 32 170 auto --skip_hf
echo "gpu_check.sh done in $((SECONDS - START)) s; results in $OUT_DIR" | tee -a "$LOG"
