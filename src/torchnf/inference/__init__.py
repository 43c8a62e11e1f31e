"""Using flows: variational inference, flow-accelerated MCMC, outlier scoring, probability queries."""
