"""Speech: recognition (faster-whisper) and synthesis (eSpeak NG), both embedded."""
