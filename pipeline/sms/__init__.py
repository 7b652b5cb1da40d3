"""SMS text on the wire: GSM 03.38 / UCS-2 encoding, segmentation and transliteration.

Pure functions with precomputed tables; safe to call per message at full throughput.
"""
