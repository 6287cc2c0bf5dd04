"""The ground floor every wing may use, and that imports none of them: the bad-input error and CLI convention,
atomic file writes and JSON reading, process-group helpers, dtype names, Hub-id recognition and shared constants."""
