"""Storage: the results store and its migrations, artifact paths, and the model store."""
