"""What the fuzz suite found, and how each was fixed: replayed by test_found.py, reported by
``benchmarks/robustness.py``."""

#: (target, what the fuzzer generated, what happened before the fix, the fix)
FOUND = [
    ("fcs: TEXT keywords", "$BEGINANALYSIS -1", "OSError [Errno 22] from FlowIO seeking before the file",
     "anything FlowIO raises while parsing TEXT is one 'corrupt FCS TEXT segment' line"),
    ("expression: tables", "a GCT file with no columns", "IndexError popping the Description column",
     "'GCT table without a Description column or samples'"),
    ("bundles: card fields", "image classifier card with 'abstain_below': null (or 'arch': {})",
     "TypeError / AttributeError while building the model", "models.bundle.interpreting: one line naming the bundle"),
    ("bundles: card fields", "flow card with 'task': []", "TypeError: unhashable type: 'list'",
     "common card fields type-checked (models.card.FIELD_TYPES)"),
    ("bundles: weight bytes", "expression weights with a tensor renamed, checksum updated to match",
     "KeyError 'layer1.weight' at the first prediction", "a forward pass on the training medians at load"),
    ("cli: flow features options", "--markers ''", "ZeroDivisionError (internal error, exit 70)",
     "'--markers '': name at least one marker'"),
    ("cli: evaluate options", "--n-boot 2043528", "no answer within 60 s (hours of resampling)",
     "--n-boot bounded 1..100,000 before any work; stats.bootstrap refuses more"),
    ("cli: evaluate options", "--seed -1", "ValueError from NumPy's generator after the images were read (exit 70)",
     "one --seed option for every verb (cli.options.Seed), 0..2^32-1, checked before any work"),
]
