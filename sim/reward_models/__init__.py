"""Learned reward models: the family itself (`model`: init, fit on preference pairs, score), the
proxy stage that fits and caches one per run configuration (`proxy`), and the gold-vs-proxy
summary of reward hacking (`hacking`)."""
