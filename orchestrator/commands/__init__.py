"""One module per CLI area; each imports its heavy dependencies (torch, ray) inside the command."""
