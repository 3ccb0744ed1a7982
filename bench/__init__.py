"""Benchmarks of the study's hot paths; not study commands (they record nothing in MLflow).

    python -m bench.speed      the data path, the training step and an epoch beside typical baselines
    python -m bench.gpu_check  issue #13's GPU check: CUDA graph vs eager, bf16 vs fp32, packed speed
"""
