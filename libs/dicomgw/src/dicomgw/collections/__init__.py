"""Research collections: de-identified, versioned copies of a query's studies, for AI pipelines."""
