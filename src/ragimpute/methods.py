"""The names of the imputation methods, without importing what runs them (the workflow reads these
when it builds its DAG; ``ragimpute.impute.PREDICTOR_FACTORIES`` maps ours to their predictors)."""

# Ours: imputed by the `impute` rule (ragimpute.impute).
OUR_METHODS = ("af", "retrieval", "copying", "model")
# Run by other tools on the same reference and harmonised target (workflow rules of their own).
EXTERNAL_METHODS = ("beagle", "minimac4")
