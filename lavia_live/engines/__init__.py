"""The model behind the guidance: one small interface, small adapters.

- :mod:`.base`    the :class:`Engine` protocol and its error type
- :mod:`.openai`  any OpenAI-compatible server: GPT-4o, SGLang, vLLM
- :mod:`.local`   a Hugging Face checkpoint in-process (CPU or GPU), e.g. the embedded model
"""
