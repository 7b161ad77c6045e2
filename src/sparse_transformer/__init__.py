"""Sparse Transformers (Child et al. 2019) in PyTorch: exact strided and fixed attention patterns,
block-sparse backends, and a Lightning training framework."""

__version__ = "0.1.0"
