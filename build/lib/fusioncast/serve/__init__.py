"""CPU inference server for a bundle: torch-free (numpy preprocessing, onnxruntime, FastAPI/uvicorn)."""
