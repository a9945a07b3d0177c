"""Capture daemon: sources -> windows -> model -> Grad-CAM -> websocket clients + session log."""
