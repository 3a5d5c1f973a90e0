"""The CLI's young-collection threshold: one number, read by the console script (``entry``) before its
imports and by ``main`` while a command runs. Standard library only (nothing at all): ``entry``
imports it before anything else."""

# Net container objects made before CPython's young collection, while a command runs (default 700).
# A command's imports and set-up make ~60,000 objects that live to the end (modules, classes, the
# rig): at the default, ~90 young and middle collections traverse them again and again (~0.02 CPU s
# before a compare's workers start, serial; 0 collections at this threshold). Garbage in cycles is
# then collected in bigger, rarer batches (at most this many objects). Collecting never changes a
# result; ``main`` restores the caller's threshold. The console script sets it before its imports
# (typer, YAML, pydantic-core: ~40 young collections, 4-8 ms, before the workers are forked).
CLI_GC_THRESHOLD = 100_000
