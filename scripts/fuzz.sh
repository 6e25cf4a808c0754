#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        each target SECONDS (default 60)
#   FUZZ_TARGETS="token phone" scripts/fuzz.sh 30
#   FUZZ_SANITIZER=none scripts/fuzz.sh   (default: address)
#
# cargo-fuzz needs nightly flags (-Z, -Zsanitizer=address); here they come
# from the stable toolchain with RUSTC_BOOTSTRAP=1. cargo-fuzz itself is
# installed into .tools on first use. The committed seeds (fuzz/corpus/<t>)
# are read, never written: new inputs go to a scratch corpus under
# fuzz/target/, so a run leaves the repository as it was. A crash stops the
# run with libFuzzer's report and the input under fuzz/artifacts/<t>/;
# `cargo fuzz run <t> <file>` replays it.
set -euo pipefail

SECONDS_EACH="${1:-60}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools"
SANITIZER="${FUZZ_SANITIZER:-address}"
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz into $TOOLS"
  # --debug: a thin CLI over cargo, built in a fraction of the release time
  cargo install -q --debug cargo-fuzz --version '^0.13' --root "$TOOLS"
fi

cd "$ROOT/fuzz"
TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list)}"
cargo fuzz build -O -s "$SANITIZER"

failed=()
for t in $TARGETS; do
  work="$ROOT/fuzz/target/scratch-corpus/$t"
  mkdir -p "$work"
  echo "=== fuzz $t for ${SECONDS_EACH}s"
  log="$ROOT/fuzz/target/fuzz-$t.log"
  if cargo fuzz run -O -s "$SANITIZER" "$t" "$work" "corpus/$t" -- \
       -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 \
       -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^Done' "$log" | tr '\n' ' '; echo
  else
    tail -60 "$log"
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: every target ran ${SECONDS_EACH}s without a crash"
