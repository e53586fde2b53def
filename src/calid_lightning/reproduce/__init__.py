"""`make reproduce-table`: the staged, cached pipeline from data to the results table."""
