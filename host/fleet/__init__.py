"""Many boards from one host: selecting them, their status, fleet runs, quarantine."""
