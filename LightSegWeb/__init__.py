"""LightSeg in the browser: Slicer's own views served by trame-slicer over the Slicer module's logic (LightSegLogic).
Started by ``lightseg web``; needs the ``web`` extra (trame-slicer, slicer-core, slicer-layer-dm)."""
