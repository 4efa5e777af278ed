"""yololab: train YOLOv3-family detectors and see what every part of the loss is doing."""
