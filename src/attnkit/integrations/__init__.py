"""Bridges to frameworks users already run: ``attnkit.integrations.hf`` (transformers)."""
