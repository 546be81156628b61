"""Names of the privacy metrics in Flower replies, shared by the ClientApp and the ServerApp."""

EPSILON = "dp-epsilon"  # the site's cumulative sample-level ε in this run, after the round
BUDGET_EXHAUSTED = "dp-budget-exhausted"  # 1: the site did not train (its next round would exceed ε)
# Under client-level (central) DP every accepted reply weighs the same: Flower's accountant assumes a
# uniform average, so FedAvg is pointed at this constant metric instead of num-examples.
UNIFORM_WEIGHT = "dp-uniform-weight"
