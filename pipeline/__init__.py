"""Rassylka: event-driven SMS notifications on Kafka."""
