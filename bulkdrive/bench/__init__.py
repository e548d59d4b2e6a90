"""`bulkdrive bench`: bulkdrive's throughput against baselines measured in the same run."""
