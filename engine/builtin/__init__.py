"""Built-in models, built offline from configs with fixed-seed random weights.

Each family's builders here (``tiny_sd15``/``sd15_config`` for SD-1.x,
``tiny_sdxl``/``sdxl_config`` for SDXL) are named by that family's descriptor
(``engine/pipelines/<family>/family.py``: ``builtin`` and ``config_folder``);
nothing else picks a builder by family.  ``build_once`` and the vendored CLIP
vocabulary (``clip_bpe/``) are shared.
"""
