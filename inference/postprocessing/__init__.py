"""From raw model outputs to Predictions on the source grid."""
