"""Sparkplug B 3.0 wire format: the payload schema (`proto`) and the edge node (`node.SparkplugFormat`)."""
