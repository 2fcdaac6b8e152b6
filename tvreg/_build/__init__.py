"""Building a skill artifact: from a checkpoint pair or a PEFT adapter, with calibrated codecs."""
