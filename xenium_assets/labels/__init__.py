"""Expression-defined cell labels: one label reference, and every sample's cells placed in it.

``reference.py`` builds the reference from a bounded sketch of samples (``sketch.py``), integrated
across samples (``integrate.py``), its classes named by one of the methods (``methods.py``: ``leiden``,
``markers``, ``annotated``, ``graphclust``) as ``options.py`` says, and places a sample's cells in it;
``table.py`` is the labels table with its exclusions and versions; ``store.py`` says where a project
keeps them.
"""
