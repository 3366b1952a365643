#!/usr/bin/env bash
# Bounded fuzzing of the broker's codec, topic tree and session engine
# (broker/fuzz, see its README): `scripts/fuzz.sh SECONDS` splits SECONDS
# over the targets (at least 10 s each), runs each from a temporary copy of
# its checked-in corpus (so the repository does not grow) and fails if any
# target crashes, panics, hangs or runs out of memory.
#
# Works with a stable toolchain only: cargo-fuzz's flags are unstable, so
# RUSTC_BOOTSTRAP=1 lets stable rustc accept them; no sanitizer (-s none),
# but optimised with debug assertions and overflow checks (-O -a).
set -euo pipefail
cd "$(dirname "$0")/../broker/fuzz"

total=${1:-60}
targets=(decode topic_tree session)
per=$((total / ${#targets[@]}))
if [ "$per" -lt 10 ]; then per=10; fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# libfuzzer-sys compiles libFuzzer itself: it needs a C++ compiler.
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "== installing g++ (libFuzzer is C++)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# One build for all targets; the same flags for `run` so it is reused.
flags=(-O -a -s none --codegen-units 16)
echo "== fuzz: building targets (broker/fuzz/target)"
cargo fuzz build "${flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  if [ -d "corpus/$t" ]; then cp -r "corpus/$t/." "$work/$t/"; fi
  echo "== fuzz: $t for ${per}s"
  log="$work/$t.log"
  # -timeout: one input taking this long is a hang (a failure).
  if cargo fuzz run "${flags[@]}" "$t" "$work/$t" -- \
    -max_total_time="$per" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  else
    echo "!! fuzz target $t FAILED; the end of its log:"
    tail -n 60 "$log"
    echo "!! reproduce: cd broker/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t artifacts/$t/<crash file>"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "== fuzz: FAILED: ${failed[*]} (inputs in broker/fuzz/artifacts/)"
  exit 1
fi
echo "== fuzz: all ${#targets[@]} targets ran ${per}s each without a crash"
