"""xDS v3 for the control server: resource building, snapshots, the snapshot cache and the
ADS servicer. The cache knows nothing of gRPC; the servicer only moves messages."""
