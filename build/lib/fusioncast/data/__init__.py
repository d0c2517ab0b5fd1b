"""Data layer: column roles, built-in sets, preprocessing (numpy only) and device-resident windows."""
