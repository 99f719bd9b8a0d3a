"""The model and its proofs: the hand-written cells (cells.py), their fused BPTT (fused.py), the optional
CPU speed-ups (packed_gemm.py, compiled.py) and the numpy reference every gradient is proven against
(reference.py, which imports nothing from this package)."""
