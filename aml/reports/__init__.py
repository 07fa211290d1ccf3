"""What users look at: training curves, ranking reports and result charts (files written
next to a run or a test; matplotlib is optional)."""
