"""A small project the dashboard's browser test runs: `offload web` serves its contracts,
`offload worker` runs its handlers."""
