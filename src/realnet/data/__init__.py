"""Records from disk: dataset layouts, robust image IO, dataset validation."""
