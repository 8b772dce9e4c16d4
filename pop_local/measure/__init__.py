"""Measuring POP: prefill and decode timing (bench), quality (evaluate), the FLOP model, importance reports."""
