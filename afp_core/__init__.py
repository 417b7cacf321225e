"""afp_core: deep audio fingerprinting (front-ends, encoders, IVF-PQ, search, protocols)."""

__version__ = "0.1.0"
