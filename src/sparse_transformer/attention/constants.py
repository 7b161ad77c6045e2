"""Names the configuration checks without importing torch (so a bad command line fails fast)."""

PRIMITIVES = ("dense", "local", "stride", "block", "summary")
PAIRS = {"strided": ("local", "stride"), "fixed": ("block", "summary")}
INTEGRATIONS = ("interleaved", "merged", "multihead")
BACKENDS = ("auto", "reference", "blocked", "sdpa", "flex", "triton")
