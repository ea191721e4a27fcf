"""Built-in providers; importing this package registers each one by name."""

from apimux.providers import (  # noqa: F401
    anthropic,
    gemini,
    hf_tei,
    hf_tgi,
    llvm,
    local,
    ollama,
    opea,
    openai,
    ovms,
    s3,
)
