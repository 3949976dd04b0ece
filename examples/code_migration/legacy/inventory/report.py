"""A one-line inventory report."""

from inventory.core import low_stock, totalValue


def render(items):
    low = ", ".join(low_stock(items)) or "none"
    return f"total: {totalValue(items):.2f}; low stock: {low}"
