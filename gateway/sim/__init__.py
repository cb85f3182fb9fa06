"""The built-in simulator: a plausible battery bank behind Modbus RTU slaves on pseudo-terminals."""
from .model import BankModel, SensorErrors
from .server import Simulator, model_from_config, simulator_from_config

__all__ = ["BankModel", "SensorErrors", "Simulator", "model_from_config", "simulator_from_config"]
