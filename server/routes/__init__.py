"""REST resources, one module each; ``ALL`` lists their route tables."""
