"""Loopback protocol simulators with fault injection, for apimux's tests and yours.

The library itself never imports this package.
"""

from apimux.testing.anthropic_sim import AnthropicSim
from apimux.testing.gemini_sim import GeminiSim
from apimux.testing.llvm_sim import LLVMSim
from apimux.testing.ollama_sim import OllamaSim
from apimux.testing.opea_sim import OpeaSim
from apimux.testing.openai_sim import OpenAISim
from apimux.testing.ovms_sim import OVMSSim
from apimux.testing.server import Fault, Faults, Recorded, SimServer
from apimux.testing.tei_sim import TEISim
from apimux.testing.tgi_sim import TGISim

__all__ = [
    "AnthropicSim", "Fault", "Faults", "GeminiSim", "LLVMSim", "OVMSSim", "OllamaSim", "OpeaSim",
    "OpenAISim", "Recorded", "SimServer", "TEISim", "TGISim",
]
