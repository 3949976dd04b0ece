"""Inventory arithmetic."""


def totalValue(items):
    """The value of the items: the sum of price times quantity."""
    return sum(item["price"] * item["qty"] for item in items)


def low_stock(items, threshold=5):
    """The names of the items with fewer than `threshold` in stock."""
    return sorted(item["name"] for item in items if item["qty"] < threshold)
