"""One architecture family per folder, each with the same anatomy (check → prepare → run → result).

Each family folder has a ``family.py`` descriptor (:class:`engine.pipelines.family.ModelFamily`),
registered in :mod:`engine.pipelines.families`, which the rest of the engine asks.
"""
