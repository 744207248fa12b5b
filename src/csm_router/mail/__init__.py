"""Mail in and out: the alias over IMAP, every message the product writes, SMTP."""
