"""edge-agent: sensors to MQTT for Raspberry Pi class devices, with edge features and a durable outbox.

`agent` owns the pipeline (acquire → signal → store → uplink) and may import `hal`; `hal` never imports `agent`.
"""

__version__ = "0.1.0"
