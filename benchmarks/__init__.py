"""The performance harness (issue 4): scenarios run against the built-in emulators on
loopback, each figure next to a peer baseline measured in the same run.

    python -m benchmarks                 # everything; appends to benchmarks/RESULTS.md
    python -m benchmarks --quick         # a fast pass with scaled-down sizes
    python -m benchmarks --scenario overhead --runs 5

Every emulator, file server, runner and peer is a separate process, so the CPU each
one spends is attributable (``os.wait4`` gives a child's own rusage and peak RSS).
"""
