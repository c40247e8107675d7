"""``node0 api``: the OpenAI-compatible HTTP API over a node0 swarm.

A FastAPI app on uvicorn (with uvloop) that joins the swarm as a client and answers
``/v1/chat/completions`` and ``/v1/models`` on the conversation engine
(:mod:`inference.conversation`), as vLLM's OpenAI server sits on its engine client. This package
sits between ``node/`` (the CLI registers ``node0 api``) and ``inference/``.
"""
