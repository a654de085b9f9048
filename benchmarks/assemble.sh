#!/usr/bin/env bash
# Rebuilds BENCHMARKS.md from its summary (benchmarks/results/SUMMARY.md) and the per-topic result
# files each benchmark writes (benchmarks/results/*.md), so every table keeps its command beside it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
{
  cat benchmarks/results/SUMMARY.md
  for topic in main_job models x86 spmm memory arm_estimate executorch backward admm admm_vs_baselines storage storage_bounds cuda fuzz; do
    f="benchmarks/results/$topic.md"
    [ -f "$f" ] || continue
    echo
    echo "---"
    echo
    sed 's/^#/##/' "$f"     # demote headings one level under the summary
  done
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md"
