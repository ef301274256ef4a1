"""The captioner port family: transformers in process, OpenAI-compatible servers, batching."""
