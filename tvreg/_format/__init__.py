"""What client and registry share: the bytes of a skill and how to check them.

Strict safetensors IO, checkpoints, fingerprints and digests (with the stat cache), the manifest,
the artifact and its verification, the sketch format, signatures, the interference report and the
codecs. ``registry_server`` imports from here, :mod:`tvreg._names` and :mod:`tvreg.errors` only.
"""
