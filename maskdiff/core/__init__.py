"""The estimator library: rate samplers, maskers, the control variate, the objective, the methods.

Pure tensors: nothing here reads or writes files, plots or shows progress bars. See
docs/architecture.md for the contracts and docs/method.md for the mathematics.
"""
