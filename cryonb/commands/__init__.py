"""The `cryonb` verbs: one module per area, each verb a `commands.common.Command` (exported from the notebooks)."""
