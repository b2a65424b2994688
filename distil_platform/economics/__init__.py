"""Economics: prices, the cost table, routing between models, the report and the statistics under their claims."""
