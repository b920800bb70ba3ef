"""Reference experiments: each writes report.md, results.json and PNG plots into its directory."""
