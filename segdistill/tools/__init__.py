"""Deployment tools: profiling (params, FLOPs, latency), ONNX export and prediction on image files."""
