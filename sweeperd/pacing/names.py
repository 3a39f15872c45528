"""The scavenger policies' names, a contract (config ``scavenger.policy``, ``--policy``, the
``policy`` label of the metrics); kept free of imports so the CLI can name them cheaply."""

POLICIES = ("go", "jemalloc-decay", "gperftools-rate", "mimalloc-delay", "eager", "none",
            "hugepage-aware", "jemalloc-hpa", "tcmalloc-background")
