"""Quantization on the host: calibration data, calibrators, the QDQ pipeline, analysis, fallback."""
