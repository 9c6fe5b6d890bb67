"""What a run writes, at the edge: its directory and provenance (`rundir`), orbax snapshots for
resume (`snapshots`), streamed trackers (`trackers`), the metrics table and summary statistics
(`results`), figures (`plots`) and Ctrl-C held back while a chunk is written (`interrupt`)."""
