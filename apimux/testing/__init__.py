"""Loopback protocol simulators with fault injection, for apimux's tests and yours.

The library itself never imports this package.
"""

from apimux.testing.openai_sim import OpenAISim
from apimux.testing.server import Fault, Faults, Recorded, SimServer

__all__ = ["Fault", "Faults", "OpenAISim", "Recorded", "SimServer"]
