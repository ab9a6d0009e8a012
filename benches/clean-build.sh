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
# Prints one Markdown table row per build: feature set, wall time, crates
# compiled, and whether aws-lc-sys (C, the slow part) or ring is among them.
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

echo "| program depends on | clean build, ${profile} (s) | crates compiled | aws-lc-sys | ring |"
echo "|---|---:|---:|:-:|:-:|"
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
    echo "| $name | could not resolve | | | |"
    continue
  fi
  start=$(date +%s.%N)
  if ! log=$(cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build -j "$jobs" --profile "$profile" 2>&1); then
    echo "| $name | failed to build: $(echo "$log" | grep -m1 -E '^error' || true) | | | |"
    continue
  fi
  end=$(date +%s.%N)
  crates=$(echo "$log" | grep -c '^ *Compiling ' || true)
  lc=$(echo "$log" | grep -q 'Compiling aws-lc-sys' && echo yes || echo no)
  ring=$(echo "$log" | grep -q 'Compiling ring ' && echo yes || echo no)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$secs" "$crates" "$lc" "$ring"
done
