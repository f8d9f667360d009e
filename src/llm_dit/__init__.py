"""llm-dit."""
