"""The front ends: the `pop-local` command line, the chat session and REPL, the OpenAI-compatible server."""
