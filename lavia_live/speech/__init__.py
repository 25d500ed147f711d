"""Speech: recognition (faster-whisper) and synthesis (eSpeak NG embedded, OpenAI TTS),
with a sentence splitter for streamed text."""
