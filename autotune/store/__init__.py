"""The Optuna store: study names (layout), opening storages and studies (storage), the
machine fingerprint (fingerprint), recovery of trials a killed tuner left RUNNING
(recovery), the writer lock and named locks (locks), the early lock check of the CLI
(preflight) and the read side (views).

Kept free of imports so that importing autotune.store.preflight loads nothing heavy.
"""
