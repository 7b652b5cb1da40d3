"""Conversion attribution: order-paid events credited last-touch to a delivered or clicked SMS."""
