"""The tests of the migrated API (they fail until `totalValue` is `total_value`)."""

import unittest

from inventory import core
from inventory.report import render

ITEMS = [
    {"name": "bolt", "price": 0.25, "qty": 400},
    {"name": "gear", "price": 12.5, "qty": 3},
    {"name": "belt", "price": 7.0, "qty": 10},
]


class InventoryTest(unittest.TestCase):
    def test_total_value(self):
        self.assertEqual(core.total_value(ITEMS), 207.5)

    def test_the_legacy_name_is_gone(self):
        self.assertFalse(hasattr(core, "totalValue"))

    def test_report(self):
        self.assertEqual(render(ITEMS), "total: 207.50; low stock: gear")


if __name__ == "__main__":
    unittest.main()
