"""The driver side of ueray: the ``ue`` command line (``cluster.cli``), pipeline files
(``cluster.pipeline``), the in-process runner (``cluster.runner``), the Ray Jobs submitter
(``cluster.submit``, ``cluster.auth``) and a local head for trying it (``cluster.local``).

Nothing heavy is imported here or at the top of ``cluster.cli``: ``ue --help`` must start fast.
"""
