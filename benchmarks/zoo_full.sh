#!/usr/bin/env bash
# The review suite at the full budget (64 px, up to 6 epochs, 100 training images/class, 5-fold CV + test).
# Resumable: a recipe run already in benchmarks/results/zoo/ with the same configuration is skipped.
# Light recipes first on every dataset, the DenseNets last, so an interrupted run still covers most rows.
# DenseNet-161 on pbc runs without the 5-fold CV (final fit, test and cross-dataset only): with CV it alone
# would take most of an hour on 2 cores. The reverse direction trains on both wbc-seg sets pooled
# (wbc-seg-1 alone has a single basophil, too few to split).
set -uo pipefail
light=(-r elseoud2020-cnn5 -r muhamad2022-cnn -r muhamad2022-alexnet -r naz2023-wavelet -r leuknet -r kalaiselvi-cnn6
       -r muhamad2022-mobilenetv2 -r sakthiraj2022-attention -r huang2020-transfer -r baig2022-cca-bagging
       -r saleem2022-features -r vogado2018-svm)
heavy=(-r claro2022-densenet121 -r houssein2023-densenet161)
leukodx benchmark --suite review -d all-aria "${light[@]}"
leukodx benchmark --suite review -d pbc --cross wbc-seg-1 --cross wbc-seg-2 "${light[@]}"
bash "$(dirname "$0")/zoo_ablation.sh"
leukodx benchmark --suite review -d wbc-seg --cross pbc "${light[@]}"
leukodx benchmark --suite review -d all-aria "${heavy[@]}"
leukodx benchmark --suite review -d pbc --cross wbc-seg-1 --cross wbc-seg-2 -r claro2022-densenet121
leukodx benchmark --suite review -d pbc --cross wbc-seg-1 --cross wbc-seg-2 -r houssein2023-densenet161 --no-cv
leukodx benchmark --suite review -d wbc-seg --cross pbc "${heavy[@]}"
