"""Framework-neutral conformance vectors for EntRGi (schema: conformance/README.md, docs/porting.md)."""
