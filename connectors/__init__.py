"""Rassylka's connectors to the outside world: SMS gateways, the SMSC simulator, ClickHouse."""
