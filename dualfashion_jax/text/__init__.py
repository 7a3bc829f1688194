"""Text side: the T5 caption tokenizer, caption formatting and parsing."""
