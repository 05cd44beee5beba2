"""signaltwin package."""
