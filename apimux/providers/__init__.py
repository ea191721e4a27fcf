"""Built-in providers; importing this package registers each one by name."""

from apimux.providers import openai  # noqa: F401
from apimux.providers import local  # noqa: F401
