#!/usr/bin/env bash
# The review suite at the full budget (64 px, 6 epochs, 100 training images/class, 5-fold CV + test),
# resumable: finished recipe runs are skipped. Writes benchmarks/results/zoo/ and LEADERBOARD.md.
set -uo pipefail
leukodx benchmark --suite review -d all-aria
leukodx benchmark --suite review -d pbc --cross wbc-seg-1 --cross wbc-seg-2
leukodx benchmark --suite review -d wbc-seg-1 --cross pbc
