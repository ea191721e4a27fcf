"""Loopback protocol simulators with fault injection, for apimux's tests and yours.

The library itself never imports this package.
"""

from apimux.testing.llvm_sim import LLVMSim  # noqa: F401
from apimux.testing.anthropic_sim import AnthropicSim
from apimux.testing.gemini_sim import GeminiSim
from apimux.testing.openai_sim import OpenAISim
from apimux.testing.ollama_sim import OllamaSim  # noqa: F401
from apimux.testing.opea_sim import OpeaSim  # noqa: F401
from apimux.testing.tgi_sim import TGISim  # noqa: F401
from apimux.testing.ovms_sim import OVMSSim  # noqa: F401
from apimux.testing.server import Fault, Faults, Recorded, SimServer
from apimux.testing.tei_sim import TEISim  # noqa: F401

__all__ = ["AnthropicSim", "Fault", "Faults", "GeminiSim", "OpenAISim", "Recorded", "SimServer"]
