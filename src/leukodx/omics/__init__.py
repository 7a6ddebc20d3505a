"""Gene-expression diagnosis: readers, literature preprocessing, in-fold feature selection, classifiers."""
