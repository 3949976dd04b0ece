"""An agent test as a user writes it: the crash matrix of three charge tools.

Run by tests/testing/test_plugin.py in a pytest subprocess; `charge_naive` and
`charge_random_key` must fail, `charge_keyed` must pass.
"""

import pytest

from everruns.testing import assert_exactly_once


@pytest.mark.parametrize("tool", ["charge_naive", "charge_random_key", "charge_keyed"])
def test_charge_survives_crashes(crash_matrix, tool):
    spec = {
        "name": f"shop-{tool.replace('_', '-')}",
        "model": {"provider": "python", "function": "shop:respond"},
        "tools": [f"shop:{tool}"],
    }
    report = crash_matrix(spec, "pay 10 EUR", only=["tool"])
    print(report)
    assert_exactly_once(report)
