#!/usr/bin/env bash
# Clean-build time of a program that depends on this crate, per feature set,
# next to one that depends on oauth2-rs (the `oauth2` crate), measured one
# after the other on the same machine. Each build starts from an empty
# target directory, with every crate already downloaded (`cargo fetch`), so
# the time is compiling only. Run it on an idle machine:
#
#     bash benches/clean-build.sh            # debug builds (what `cargo run` does)
#     PROFILE=release bash benches/clean-build.sh
#
# Prints one Markdown table row per feature set: wall time and CPU time
# (user + system, summed over every compiler process: what the build costs
# whatever else the machine does), crates compiled, and whether aws-lc-sys
# or ring is among them. ROUNDS=n builds each set n times, interleaved, and
# shows the fastest round and every round.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
profile="${PROFILE:-dev}"
jobs="${JOBS:-$(nproc)}"

# name | dependency line for Cargo.toml
sets=(
  "tower-oauth2 (default: reqwest, rustls on aws-lc-rs)|tower-oauth2 = { path = \"$here\" }"
  "tower-oauth2 reqwest-rustls-ring|tower-oauth2 = { path = \"$here\", default-features = false, features = [\"reqwest-rustls-ring\"] }"
  "tower-oauth2 reqwest-rustls-ring + private-key-jwt|tower-oauth2 = { path = \"$here\", default-features = false, features = [\"reqwest-rustls-ring\", \"private-key-jwt\"] }"
  "tower-oauth2 reqwest-native-tls|tower-oauth2 = { path = \"$here\", default-features = false, features = [\"reqwest-native-tls\"] }"
  "tower-oauth2 leanest (no default features: your own transport)|tower-oauth2 = { path = \"$here\", default-features = false }"
  "oauth2 5.0 (default: reqwest 0.12, rustls on ring)|oauth2 = \"=5.0.0\""
  "oauth2 5.0 leanest (no default features: your own client)|oauth2 = { version = \"=5.0.0\", default-features = false }"
)
if [[ -n "${ONLY:-}" ]]; then
  mapfile -t sets < <(printf '%s\n' "${sets[@]}" | grep -F -- "$ONLY")
fi

rounds="${ROUNDS:-1}"
declare -A times
declare -A info
declare -A cpu
echo "| program depends on | clean build, ${profile}: wall (s) | CPU time, user + system (s) | crates compiled | aws-lc-sys | ring |"
echo "|---|---:|---:|---:|:-:|:-:|"
# Rounds interleave the feature sets, so a disturbance hits all alike; the
# table shows each set's fastest round (and every round, with ROUNDS > 1).
for round in $(seq "$rounds"); do
  i=0
  for entry in "${sets[@]}"; do
    name="${entry%%|*}"
    dep="${entry#*|}"
    i=$((i + 1))
    dir="$work/p$i"
    mkdir -p "$dir/src"
    printf '[package]\nname = "p%s"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n%s\n' "$i" "$dep" >"$dir/Cargo.toml"
    echo 'fn main() {}' >"$dir/src/main.rs"
    if ! (cd "$dir" && cargo fetch -q 2>/dev/null); then
      info[$i]="$name|could not resolve"
      continue
    fi
    TIMEFORMAT='%R %U %S'
    if ! { took=$( { time (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build -j "$jobs" --profile "$profile" >"$dir/log" 2>&1); } 2>&1 ); }; then
      info[$i]="$name|failed to build: $(grep -m1 -E '^error' "$dir/log" || true)"
      rm -rf "$dir/target"
      continue
    fi
    log=$(cat "$dir/log")
    read -r wall user sys <<<"$took"
    times[$i]="${times[$i]:-} $(awk -v w="$wall" 'BEGIN { printf "%.1f", w }')"
    cpu[$i]="${cpu[$i]:-} $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')"
    crates=$(echo "$log" | grep -c '^ *Compiling ' || true)
    lc=$(echo "$log" | grep -q 'Compiling aws-lc-sys' && echo yes || echo no)
    ring=$(echo "$log" | grep -q 'Compiling ring ' && echo yes || echo no)
    info[$i]="$name|$crates|$lc|$ring"
    rm -rf "$dir/target"
  done
done
i=0
for entry in "${sets[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name crates lc ring <<<"${info[$i]:-${entry%%|*}|not built}"
  if [[ -z "${times[$i]:-}" ]]; then
    echo "| $name | $crates | | | | |"
    continue
  fi
  best=$(tr ' ' '\n' <<<"${times[$i]}" | grep . | sort -n | head -1)
  least=$(tr ' ' '\n' <<<"${cpu[$i]}" | grep . | sort -n | head -1)
  all="" allcpu=""
  if ((rounds > 1)); then all=" (${times[$i]# })" allcpu=" (${cpu[$i]# })"; fi
  echo "| $name | $best$all | $least$allcpu | $crates | $lc | $ring |"
done
