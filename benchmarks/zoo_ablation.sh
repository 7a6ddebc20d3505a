#!/usr/bin/env bash
# Augmentation and colour-normalization ablations on the cross-dataset protocol (pbc -> wbc-seg-1/2),
# one fast recipe, full budget without CV. Resumable like the suite.
set -uo pipefail
for aug in none flip rotation color all; do
  leukodx benchmark -d pbc -r muhamad2022-cnn --no-cv --augment "$aug" --cross wbc-seg-1 --cross wbc-seg-2
done
for stain in none reinhard macenko; do
  leukodx benchmark -d pbc -r muhamad2022-cnn --no-cv --stain "$stain" --cross wbc-seg-1 --cross wbc-seg-2
done
