"""llmflow: LLM Flow Processes for text-conditioned probabilistic regression.

One module per concept: ``kernels`` (covariance functions), ``gp`` (exact Gaussian-process
prior draws and posteriors), ``prior`` (the prior stage writing zarr shards), ``config``
(config loading and validation), ``io`` (atomic zarr writes).
"""

__version__ = "0.1.0"
