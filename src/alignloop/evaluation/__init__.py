"""`alignloop eval`: how much a policy improved on its baseline, how far it moved, and what it forgot."""
