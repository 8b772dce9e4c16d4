"""Framework backends, each an optional extra imported on demand:

    from pop_local.integrations.langchain import ChatPopLocal       # pip install "pop-local[langchain]"
    from pop_local.integrations.llama_index import PopLocalLLM      # pip install "pop-local[llama-index]"
"""
