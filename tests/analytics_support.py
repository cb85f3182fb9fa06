"""Analytics on a simulated bank without the gateway: a store carrying the string supervision (the state the
analytics follow), a state file, default config."""
from __future__ import annotations

from gateway.analytics import ANALYTICS_SCHEMA
from gateway.analytics.engine import Analytics
from gateway.analytics.state import StateDB
from gateway.config import fill_defaults
from gateway.points import PointStore
from gateway.sim.model import BankModel
from gateway.strings import SCHEMA as STRINGS_SCHEMA, StringSupervisor, string_states
from gateway.topology import BatteryConfig, StringConfig
from tests.support import deep_merge


def analytics_config(**over) -> dict:
    """The analytics section with its defaults, ``over`` merged in (nested dicts merge)."""
    return fill_defaults(ANALYTICS_SCHEMA, deep_merge({}, over))


def model_strings(model: BankModel) -> list[StringConfig]:
    return [StringConfig(sid, st.cells, f"String {sid}",
                         BatteryConfig(nominal_voltage=2.0 * st.cells_per_unit, cells_per_unit=st.cells_per_unit,
                                       capacity_ah=st.capacity_ah))
            for sid, st in model.strings.items()]


def make_supervisor(model: BankModel, store: PointStore, **section_over) -> StringSupervisor:
    """The string supervision of the model's strings, its transforms on ``store``."""
    sup = StringSupervisor(model_strings(model), fill_defaults(STRINGS_SCHEMA, deep_merge({}, section_over)), store,
                           string_states())
    sup.install()
    return sup


def make_analytics(tmp_path, model: BankModel, **cfg_over) -> tuple[Analytics, PointStore]:
    store = PointStore()
    make_supervisor(model, store)
    an = Analytics(model_strings(model), analytics_config(**cfg_over), StateDB(tmp_path / "analytics.sqlite"), store,
                   now=model.t)
    store.subscribe(an.observe)
    return an, store
