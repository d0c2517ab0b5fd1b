"""fusioncast: Temporal Fusion Transformer forecasting with exact ONNX export and fast CPU serving."""

__version__ = "0.1.0"
