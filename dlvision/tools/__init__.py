"""Project tools reachable as ``dlvision NAME ...`` beside the Lightning sub-commands."""
