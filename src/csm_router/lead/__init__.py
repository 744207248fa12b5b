"""What the CS lead and the operator see: report, digest, status page, metrics, health."""
