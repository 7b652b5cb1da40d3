"""The router stage: business events in, rendered notification requests out."""
