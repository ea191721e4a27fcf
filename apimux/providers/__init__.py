"""Built-in providers; importing this package registers each one by name."""

from apimux.providers import openai  # noqa: F401
from apimux.providers import hf_tgi, ollama, opea  # noqa: F401
from apimux.providers import s3  # noqa: F401
from apimux.providers import anthropic, gemini  # noqa: F401
from apimux.providers import hf_tei, llvm  # noqa: F401
from apimux.providers import ovms  # noqa: F401
from apimux.providers import local  # noqa: F401
