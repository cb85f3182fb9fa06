"""The built-in simulator: a plausible battery bank behind Modbus RTU slaves on pseudo-terminals."""
from .model import BankModel
from .server import Simulator, simulator_from_config

__all__ = ["BankModel", "Simulator", "simulator_from_config"]
