"""Streamlit-only glue: cached resources, session-state keys and shared widgets."""
