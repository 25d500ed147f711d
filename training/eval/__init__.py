"""`lavia eval`: next-step and current-step accuracy, mistake detection, parse rate, latency."""
