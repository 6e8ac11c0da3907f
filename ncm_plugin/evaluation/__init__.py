"""What a test run leaves and how it is read: the test recorder (predictions
and confusion matrix), results tables and comparisons, and the views in vis/."""
