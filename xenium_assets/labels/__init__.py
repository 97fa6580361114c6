"""Expression-defined cell labels, one set for all samples, each with a confidence.

``joint.py`` builds the cross-sample matrix; one module per method (``leiden``, ``markers``,
``reference``, ``graphclust``) returns a :class:`~xenium_assets.labels.joint.Labelling`; ``finalise``
applies exclusions and versions the result.
"""
