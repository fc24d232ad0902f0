"""Training: the one loop (`loop`), one recorded trial (`trial`), and the CPU memory policy."""
