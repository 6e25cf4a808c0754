#!/usr/bin/env bash
# Checks that `appguard-cli check-config` and Envoy (loading the real module)
# agree on every example configuration: both accept it or both refuse it,
# with the same message. The examples in examples/*.json (not *.demo.json,
# which are demo request lists) must be accepted; those in examples/bad/*.json
# must be refused.
#
# Usage: scripts/check-config-agreement.sh WASM ENVOY
#   WASM   the built module, e.g. target/appguard.wasm
#   ENVOY  the Envoy binary, e.g. .venv/bin/envoy
# Needs target/debug/appguard-cli (cargo build -p appguard-cli) and
# .venv/bin/python with PyYAML (make deps). Run from anywhere.
set -u -o pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 WASM ENVOY" >&2
  exit 2
fi
WASM=$(realpath "$1")
ENVOY=$(realpath "$2")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CLI=target/debug/appguard-cli
PYTHON=.venv/bin/python
for f in "$WASM" "$ENVOY" "$CLI" "$PYTHON"; do
  [ -e "$f" ] || { echo "missing: $f" >&2; exit 2; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The filter's message without serde's position: the rendered Envoy YAML
# carries the configuration re-serialised on one line, so line and column
# differ from the file's.
message() {
  grep -o 'invalid configuration.*' "$1" | head -n 1 | sed -E 's/ at line [0-9]+ column [0-9]+$//'
}

files=()
for f in examples/*.json; do
  case "$f" in *.demo.json) ;; *) files+=("$f") ;; esac
done
files+=(examples/bad/*.json)

failed=0
printf '%-45s %-7s %-7s %s\n' file cli envoy result
for f in "${files[@]}"; do
  case "$f" in examples/bad/*) want=refuse ;; *) want=accept ;; esac

  "$CLI" check-config "$f" >"$TMP/cli.out" 2>"$TMP/cli.err"
  case $? in
    0) cli=accept ;;
    1) cli=refuse ;;
    *) cli=error ;;
  esac

  if "$PYTHON" scripts/render-envoy.py --wasm "$WASM" --config "$f" envoy/envoy.yaml \
      >"$TMP/envoy.yaml" 2>"$TMP/render.err"; then
    if "$ENVOY" --mode validate -c "$TMP/envoy.yaml" --log-level error \
        >"$TMP/envoy.out" 2>"$TMP/envoy.err"; then
      envoy=accept
    else
      envoy=refuse
    fi
  else
    envoy=error
    cp "$TMP/render.err" "$TMP/envoy.err"
  fi

  result=ok
  detail=""
  if [ "$cli" = error ] || [ "$envoy" = error ]; then
    result=ERROR
  elif [ "$cli" != "$envoy" ]; then
    result=DISAGREE
  elif [ "$cli" != "$want" ]; then
    result="UNEXPECTED (want $want)"
  elif [ "$cli" = refuse ]; then
    cli_msg=$(message "$TMP/cli.err")
    envoy_msg=$(message "$TMP/envoy.err")
    if [ "$cli_msg" != "$envoy_msg" ]; then
      result="MESSAGE DIFFERS"
      detail="    cli:   $cli_msg"$'\n'"    envoy: $envoy_msg"
    fi
  fi
  printf '%-45s %-7s %-7s %s\n' "$f" "$cli" "$envoy" "$result"
  if [ "$result" != ok ]; then
    failed=1
    if [ -n "$detail" ]; then
      echo "$detail"
    else
      sed 's/^/    cli:   /' "$TMP/cli.err" | head -n 5
      grep -v '^\s*$' "$TMP/envoy.err" | tail -n 5 | sed 's/^/    envoy: /'
    fi
  fi
done

# How the configuration is wrapped in Envoy's YAML (StringValue, BytesValue,
# Struct, no @type): tests/fixtures/envoy-configuration/{accept,refuse}-*.yaml,
# whole Envoy files. Only the verdicts are compared (Envoy's own parser
# words a refusal of the wrapper its way).
wrappers=(tests/fixtures/envoy-configuration/*.yaml)
for f in "${wrappers[@]}"; do
  case "$(basename "$f")" in refuse-*) want=refuse ;; *) want=accept ;; esac
  "$CLI" check-config "$f" >"$TMP/cli.out" 2>"$TMP/cli.err"
  case $? in 0) cli=accept ;; 1) cli=refuse ;; *) cli=error ;; esac
  if "$PYTHON" scripts/render-envoy.py --wasm "$WASM" "$f" >"$TMP/envoy.yaml" 2>"$TMP/envoy.err" \
      && "$ENVOY" --mode validate -c "$TMP/envoy.yaml" --log-level error >"$TMP/envoy.out" 2>"$TMP/envoy.err"; then
    envoy=accept
  else
    envoy=refuse
  fi
  result=ok
  if [ "$cli" != "$envoy" ]; then result=DISAGREE; elif [ "$cli" != "$want" ]; then result="UNEXPECTED (want $want)"; fi
  printf '%-45s %-7s %-7s %s\n' "$(basename "$f")" "$cli" "$envoy" "$result"
  if [ "$result" != ok ]; then
    failed=1
    sed 's/^/    cli:   /' "$TMP/cli.err" | head -n 5
    grep -v '^\s*$' "$TMP/envoy.err" | tail -n 3 | sed 's/^/    envoy: /'
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "check-config-agreement: appguard-cli and Envoy disagree (see above)" >&2
  exit 1
fi
echo "check-config-agreement: appguard-cli and Envoy agree on $((${#files[@]} + ${#wrappers[@]})) files"
