"""Built-in providers; importing this package registers each one by name."""

from apimux.providers import openai  # noqa: F401
