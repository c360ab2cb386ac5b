"""The demo application: its real-scan sources (fetched from registry packages and cached), its data recipe,
its models and its run (``restore-rwkv demo``)."""
