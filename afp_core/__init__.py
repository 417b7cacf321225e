"""afp_core: deep audio fingerprinting (front-ends, encoders, IVF-PQ database, search, protocols)."""

__version__ = "0.1.0"
