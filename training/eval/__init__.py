"""`lavia eval`: next-step and current-step accuracy, mistake detection, question answers,
parse rate, latency; with ``--live``, demo videos through the live loop."""
