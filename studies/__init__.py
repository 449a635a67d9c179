"""Studies on simulated shops: the demo, regret and sensitivity, the simulate and A/B runners,
sweeps and candidate evaluation, with the adapters that drive the library's engine from a
:mod:`simulator` world. The library (:mod:`banditrec`) never imports this package.
"""
