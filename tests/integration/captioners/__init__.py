"""Model adapters on tiny random-weight models and a stub OpenAI server."""
